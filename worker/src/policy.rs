//! The scaling policy: target tracking, as AWS Auto Scaling does it.
//!
//! `desired = ceil(current × metric ÷ target)`, where the metric is the
//! backlog per instance (queued jobs ÷ instances); so `desired = ceil(backlog
//! ÷ target)`. A change smaller than the tolerance band is ignored (no
//! flapping around the target), the result is clamped to `[min, max]`, and
//! scaling *in* follows the highest recommendation of the stabilisation window
//! (so a short lull does not drop workers that the next burst needs), while
//! scaling *out* is immediate.
//!
//! The backlog is the distinct unfinished jobs of the uploads table
//! (`UploadStats::unfinished`), locally and on AWS. On AWS the worker group's
//! target-tracking policy is the same rule: metric math `QueueBacklog (the
//! web servers' published count) ÷ in-service instances` with target
//! `backlog_per_worker`, the service's own tolerance, and the group's default
//! instance warmup standing in for the stabilisation window.

use std::collections::VecDeque;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub min: u32,
    pub max: u32,
    /// The backlog per instance to hold.
    pub target: f64,
    /// Relative band around the target in which nothing changes (0.1 = ±10 %).
    pub tolerance: f64,
    /// How long a lower recommendation must hold before scaling in.
    pub scale_in_window_ms: i64,
}

/// The band around the target in which nothing changes: AWS target tracking
/// ignores changes within about 10 % of its target, and the local pool holds
/// the same band so that both scale alike.
pub const TOLERANCE: f64 = 0.1;

impl Policy {
    /// The policy the configuration asks for (`workers_min`, `workers_max`,
    /// `backlog_per_worker`, `scale_in_secs`).
    pub fn from_config(config: &flipstack_core::Config) -> Policy {
        Policy {
            min: config.workers_min,
            max: config.workers_max,
            target: config.backlog_per_worker.max(1) as f64,
            tolerance: TOLERANCE,
            scale_in_window_ms: config.scale_in_secs as i64 * 1000,
        }
    }

    /// One step of the rule, without memory: what the metric asks for now.
    pub fn recommend(&self, current: u32, backlog: f64) -> u32 {
        let target = self.target.max(f64::EPSILON);
        let raw = if current == 0 {
            (backlog / target).ceil()
        } else {
            let per_instance = backlog / current as f64;
            let ratio = per_instance / target;
            if (ratio - 1.0).abs() <= self.tolerance {
                current as f64
            } else {
                (current as f64 * per_instance / target).ceil()
            }
        };
        (raw.max(0.0).min(u32::MAX as f64) as u32).clamp(self.min, self.max.max(self.min))
    }
}

/// The policy with the memory the stabilisation window needs.
#[derive(Debug, Clone)]
pub struct Scaler {
    pub policy: Policy,
    recent: VecDeque<(i64, u32)>,
}

impl Scaler {
    pub fn new(policy: Policy) -> Scaler {
        Scaler { policy, recent: VecDeque::new() }
    }

    /// An operator set the count (as `SetDesiredCapacity` does on AWS):
    /// clamped to `[min, max]`, and remembered as a recommendation, so the
    /// policy scales in from it only after the stabilisation window.
    pub fn hold(&mut self, now_ms: i64, desired: u32) -> u32 {
        let desired = desired.clamp(self.policy.min, self.policy.max.max(self.policy.min));
        self.recent.push_back((now_ms, desired));
        desired
    }

    /// The desired count at `now_ms` for `current` instances and `backlog` queued jobs.
    pub fn decide(&mut self, now_ms: i64, current: u32, backlog: f64) -> u32 {
        let recommended = self.policy.recommend(current, backlog);
        self.recent.push_back((now_ms, recommended));
        while self.recent.front().is_some_and(|(t, _)| now_ms - t > self.policy.scale_in_window_ms) {
            self.recent.pop_front();
        }
        if recommended >= current {
            return recommended;
        }
        // Scale in only as far as the window's highest recommendation allows.
        let floor = self.recent.iter().map(|(_, r)| *r).max().unwrap_or(recommended);
        floor.min(current).max(recommended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy { min: 1, max: 8, target: 4.0, tolerance: 0.1, scale_in_window_ms: 10_000 }
    }

    #[test]
    fn tracks_the_target() {
        let p = policy();
        assert_eq!(p.recommend(1, 20.0), 5, "20 jobs at 4 per worker");
        assert_eq!(p.recommend(2, 20.0), 5);
        assert_eq!(p.recommend(0, 3.0), 1);
        assert_eq!(p.recommend(5, 0.0), 1, "idle goes down to min");
    }

    #[test]
    fn tolerance_band_holds_steady() {
        let p = policy();
        // 4.3 per worker is within 10 % of 4: no change.
        assert_eq!(p.recommend(3, 12.9), 3);
        // 4.5 per worker is outside: ceil(3 × 4.5 ÷ 4) = 4.
        assert_eq!(p.recommend(3, 13.5), 4);
        // 3.7 per worker is inside the band below the target too.
        assert_eq!(p.recommend(3, 11.1), 3);
    }

    #[test]
    fn clamps_to_min_and_max() {
        let p = policy();
        assert_eq!(p.recommend(8, 1000.0), 8);
        assert_eq!(p.recommend(1, 0.0), 1);
        let fixed = Policy { min: 2, max: 2, ..p };
        assert_eq!(fixed.recommend(2, 1000.0), 2);
        assert_eq!(fixed.recommend(2, 0.0), 2);
    }

    #[test]
    fn scale_out_is_immediate_scale_in_waits_for_the_window() {
        let mut s = Scaler::new(policy());
        assert_eq!(s.decide(0, 1, 24.0), 6, "out at once");
        // The burst is over: the recommendation drops, but the window remembers 6.
        assert_eq!(s.decide(2_000, 6, 0.0), 6);
        assert_eq!(s.decide(9_000, 6, 0.0), 6);
        // Once the high recommendation is older than the window, scale in.
        assert_eq!(s.decide(12_500, 6, 0.0), 1);
    }

    #[test]
    fn an_operators_count_holds_for_the_window_then_the_policy_goes_on() {
        let mut s = Scaler::new(policy());
        assert_eq!(s.hold(0, 5), 5);
        assert_eq!(s.decide(1_000, 5, 0.0), 5, "held while the window remembers it");
        assert_eq!(s.decide(10_500, 5, 0.0), 1, "then scaled in as the backlog asks");
        assert_eq!(s.hold(11_000, 99), 8, "clamped to max");
        assert_eq!(s.hold(11_000, 0), 1, "clamped to min");
    }

    #[test]
    fn a_short_lull_does_not_drop_workers() {
        let mut s = Scaler::new(policy());
        s.decide(0, 1, 16.0);
        assert_eq!(s.decide(1_000, 4, 0.0), 4);
        assert_eq!(s.decide(2_000, 4, 16.0), 4);
        assert_eq!(s.decide(11_500, 4, 0.0), 4, "the burst at 2 s is still in the window");
    }
}
