//! Runs the AWS provisioner (flipstack-provision's `aws` module) for the
//! provisioning view: the plan as the CLI prints it, and `up` or `down` with
//! their progress events turned into the view's steps.

use std::sync::Mutex;

use flipstack_provision::aws::{self, DownOptions, Event, Kind, StackSpec, Step};
use tokio::sync::mpsc;

use crate::app::Msg;
use crate::provision::{ProvisionMsg, ProvisionOp, StepState};

pub async fn plan(spec: StackSpec, tx: mpsc::Sender<Msg>) {
    let plan =
        aws::plan(&spec).await.map(|p| p.to_string().lines().map(String::from).collect()).map_err(|e| e.to_string());
    let _ = tx.send(Msg::Provision(ProvisionMsg::Plan(plan))).await;
}

/// `up` or `down`, reporting every step as it happens, then the outcome.
pub async fn apply(spec: StackSpec, op: ProvisionOp, tx: mpsc::Sender<Msg>) {
    // The provisioner reports through a plain callback: its events go through
    // an unbounded channel (the provisioner never waits on the screen) to
    // the app's.
    let (step_tx, mut step_rx) = mpsc::unbounded_channel::<ProvisionMsg>();
    let forward = {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(m) = step_rx.recv().await {
                if tx.send(Msg::Provision(m)).await.is_err() {
                    return;
                }
            }
        })
    };
    let steps = Steps::default();
    let progress = move |e: &Event| {
        let _ = step_tx.send(steps.message(e));
    };
    let outcome = match op {
        ProvisionOp::Up => aws::up(&spec, &progress)
            .await
            .map(|plan| format!("{} created, {} changed, {} unchanged", plan.creates(), plan.updates(), plan.keeps())),
        ProvisionOp::Down => aws::down(&spec.aws, &spec.stack, &DownOptions::default(), &progress).await.map(|t| {
            let mut s = format!("{} deleted", t.deleted.len());
            if !t.left_alone.is_empty() {
                s.push_str(&format!(", {} left alone (not tagged as the stack's)", t.left_alone.len()));
            }
            s
        }),
    };
    // The last step reaches the view before the outcome.
    drop(progress);
    let _ = forward.await;
    let _ = tx.send(Msg::Provision(ProvisionMsg::Finished(outcome.map_err(|e| e.to_string())))).await;
}

/// Gives each resource a line of its own, in the order they first appear.
#[derive(Default)]
struct Steps(Mutex<Vec<Line>>);

struct Line {
    kind: Kind,
    name: String,
    warning: bool,
    /// The step before `Done`, which says what was done.
    last: Option<Step>,
}

impl Steps {
    fn message(&self, e: &Event) -> ProvisionMsg {
        let warning = matches!(e.step, Step::Warning(_) | Step::LeftAlone(_));
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // A warning keeps a line of its own: the resource's next step must
        // not overwrite what the operator should know.
        let index = match seen.iter().position(|l| !warning && !l.warning && l.kind == e.kind && l.name == e.name) {
            Some(i) => i,
            None => {
                seen.push(Line { kind: e.kind, name: e.name.clone(), warning, last: None });
                seen.len() - 1
            }
        };
        let line = &mut seen[index];
        let state = state(&e.step, line.last.as_ref());
        if !matches!(e.step, Step::Waiting { .. }) {
            line.last = Some(e.step.clone());
        }
        ProvisionMsg::Step { index, name: format!("{} {}", e.kind.label(), e.name), state }
    }
}

fn state(step: &Step, before: Option<&Step>) -> StepState {
    match step {
        Step::Done => StepState::Done(
            match before {
                Some(Step::Creating) => "created",
                Some(Step::Updating(_)) => "changed",
                Some(Step::Deleting) => "deleted",
                _ => "done",
            }
            .into(),
        ),
        Step::Checking => StepState::Running("checking".into()),
        Step::Creating => StepState::Running("creating".into()),
        Step::Updating(what) => StepState::Running(format!("changing: {}", what.join(", "))),
        Step::Deleting => StepState::Running("deleting".into()),
        Step::Waiting { what, elapsed_secs } => StepState::Running(format!("waiting for {what} ({elapsed_secs} s)")),
        Step::Exists => StepState::Done("exists".into()),
        Step::LeftAlone(why) => StepState::Warning(format!("left alone: {why}")),
        Step::Warning(w) => StepState::Warning(w.clone()),
        Step::Failed(e) => StepState::Failed(e.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: Kind, name: &str, step: Step) -> Event {
        Event { kind, name: name.into(), step }
    }

    #[test]
    fn each_resource_keeps_its_line_and_warnings_get_their_own() {
        let steps = Steps::default();
        let index = |m: ProvisionMsg| match m {
            ProvisionMsg::Step { index, .. } => index,
            other => panic!("not a step: {other:?}"),
        };
        assert_eq!(index(steps.message(&event(Kind::Queue, "q", Step::Checking))), 0);
        assert_eq!(index(steps.message(&event(Kind::Bucket, "b", Step::Checking))), 1);
        assert_eq!(index(steps.message(&event(Kind::Queue, "q", Step::Warning("slow".into())))), 2);
        assert_eq!(
            steps.message(&event(Kind::Queue, "q", Step::Creating)),
            ProvisionMsg::Step { index: 0, name: "queue q".into(), state: StepState::Running("creating".into()) }
        );
        // Done says what was done.
        assert_eq!(
            steps.message(&event(Kind::Queue, "q", Step::Done)),
            ProvisionMsg::Step { index: 0, name: "queue q".into(), state: StepState::Done("created".into()) }
        );
        let last = steps.message(&event(Kind::Bucket, "b", Step::Waiting { what: "it".into(), elapsed_secs: 3 }));
        assert_eq!(
            last,
            ProvisionMsg::Step {
                index: 1,
                name: "bucket b".into(),
                state: StepState::Running("waiting for it (3 s)".into())
            }
        );
    }
}
