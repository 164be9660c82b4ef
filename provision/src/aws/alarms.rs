//! The CloudWatch alarms an operator needs (docs/aws.md, "Alarms", says what
//! each means and what to do): a job in the dead-letter queue, a job waiting
//! too long, the load balancer answering 5xx, the database running out of
//! storage. Each sends to the SNS topic `--alarm-topic-arn` when given.

use aws_sdk_cloudwatch::types::{
    ComparisonOperator, Dimension, Metric, MetricAlarm, MetricDataQuery, MetricStat, StandardUnit, Statistic, Tag,
};

use super::balancer::LoadBalancer;
use super::clients::aws_error;
use super::run::Run;
use super::{Kind, ProvisionError, StackSpec};
use crate::fleet::STACK_TAG;

/// Every alarm's period.
const PERIOD: i32 = 300;

/// One metric of an alarm: namespace, name, one dimension, statistic.
#[derive(Debug, Clone, PartialEq)]
struct Measure {
    namespace: &'static str,
    metric: &'static str,
    dimension: (&'static str, String),
    statistic: &'static str,
}

#[derive(Debug, Clone, PartialEq)]
enum Source {
    One(Measure),
    /// Metric math: the queries by id, and the expression the alarm watches.
    Math(Vec<(&'static str, Measure)>, &'static str),
}

/// An alarm as the stack wants it.
#[derive(Debug, Clone)]
pub struct AlarmWant {
    pub name: String,
    pub description: String,
    source: Source,
    comparison: ComparisonOperator,
    threshold: f64,
    periods: i32,
    actions: Vec<String>,
}

impl AlarmWant {
    /// Everything that decides the alarm, comparable with [`fingerprint_of`].
    fn fingerprint(&self) -> String {
        let source = match &self.source {
            Source::One(m) => {
                measure_text(m.namespace, m.metric, &[(m.dimension.0, m.dimension.1.as_str())], m.statistic)
            }
            Source::Math(queries, expr) => {
                let mut parts: Vec<String> = queries
                    .iter()
                    .map(|(id, m)| {
                        format!(
                            "{id}={}",
                            measure_text(
                                m.namespace,
                                m.metric,
                                &[(m.dimension.0, m.dimension.1.as_str())],
                                m.statistic
                            )
                        )
                    })
                    .collect();
                parts.push(format!("expr={expr}"));
                parts.sort();
                parts.join(";")
            }
        };
        let mut actions = self.actions.clone();
        actions.sort();
        format!("{source}|{}{}x{}|{}", self.comparison.as_str(), self.threshold, self.periods, actions.join(","))
    }
}

fn measure_text(namespace: &str, metric: &str, dims: &[(&str, &str)], stat: &str) -> String {
    let mut d: Vec<String> = dims.iter().map(|(k, v)| format!("{k}={v}")).collect();
    d.sort();
    format!("{namespace}/{metric}[{}]:{stat}@{PERIOD}", d.join(","))
}

/// The same fingerprint, read from what CloudWatch has.
fn fingerprint_of(a: &MetricAlarm) -> String {
    let dims = |ds: &[Dimension]| -> Vec<(String, String)> {
        ds.iter().map(|d| (d.name().unwrap_or("").to_owned(), d.value().unwrap_or("").to_owned())).collect()
    };
    let text = |ns: &str, metric: &str, ds: &[(String, String)], stat: &str, period: i32| {
        let mut d: Vec<String> = ds.iter().map(|(k, v)| format!("{k}={v}")).collect();
        d.sort();
        format!("{ns}/{metric}[{}]:{stat}@{period}", d.join(","))
    };
    let source = if a.metrics().is_empty() {
        text(
            a.namespace().unwrap_or(""),
            a.metric_name().unwrap_or(""),
            &dims(a.dimensions()),
            a.statistic().map(|s| s.as_str()).unwrap_or(""),
            a.period().unwrap_or(0),
        )
    } else {
        let mut parts: Vec<String> = a
            .metrics()
            .iter()
            .map(|q| match (q.expression(), q.metric_stat()) {
                (Some(e), _) => format!("expr={e}"),
                (None, Some(s)) => {
                    let m = s.metric();
                    format!(
                        "{}={}",
                        q.id().unwrap_or(""),
                        text(
                            m.and_then(|m| m.namespace()).unwrap_or(""),
                            m.and_then(|m| m.metric_name()).unwrap_or(""),
                            &m.map(|m| dims(m.dimensions())).unwrap_or_default(),
                            s.stat().unwrap_or(""),
                            s.period().unwrap_or(0)
                        )
                    )
                }
                (None, None) => format!("{}=?", q.id().unwrap_or("")),
            })
            .collect();
        parts.sort();
        parts.join(";")
    };
    let mut actions = a.alarm_actions().to_vec();
    actions.sort();
    format!(
        "{source}|{}{}x{}|{}",
        a.comparison_operator().map(|c| c.as_str()).unwrap_or(""),
        a.threshold().unwrap_or(f64::NAN),
        a.evaluation_periods().unwrap_or(0),
        actions.join(",")
    )
}

/// The stack's alarms. `lb` may be pending (a plan of a new stack).
pub fn wanted(run: &Run<'_>, spec: &StackSpec, lb: &LoadBalancer) -> Vec<AlarmWant> {
    let names = &run.names;
    let actions: Vec<String> = spec.alarm_topic_arn.iter().cloned().collect();
    let lb_dim = lb.metric_dimension().unwrap_or_else(|| Run::pending("load balancer"));
    let measure = |namespace, metric, dimension: (&'static str, String), statistic| Measure {
        namespace,
        metric,
        dimension,
        statistic,
    };
    let alarm = |suffix: &str, description: String, source, comparison, threshold, periods| AlarmWant {
        name: names.alarm(suffix),
        description,
        source,
        comparison,
        threshold,
        periods,
        actions: actions.clone(),
    };
    let free_bytes = (f64::from(spec.db_storage_gb) * 0.1).max(1.0) * 1024.0 * 1024.0 * 1024.0;
    vec![
        alarm(
            "dead-letters",
            format!(
                "flipstack {}: a job reached the dead-letter queue (its picture failed to flip again and again). See docs/aws.md, Alarms.",
                names.stack
            ),
            Source::One(measure(
                "AWS/SQS",
                "ApproximateNumberOfMessagesVisible",
                ("QueueName", names.dead_letter_queue()),
                "Maximum",
            )),
            ComparisonOperator::GreaterThanThreshold,
            0.0,
            1,
        ),
        alarm(
            "oldest-job",
            format!(
                "flipstack {}: the oldest job has waited over {} minutes (workers down, stuck or too few). See docs/aws.md, Alarms.",
                names.stack, spec.oldest_job_alarm_minutes
            ),
            Source::One(measure("AWS/SQS", "ApproximateAgeOfOldestMessage", ("QueueName", names.queue()), "Maximum")),
            ComparisonOperator::GreaterThanThreshold,
            f64::from(spec.oldest_job_alarm_minutes) * 60.0,
            1,
        ),
        alarm(
            "http-5xx",
            format!(
                "flipstack {}: over 5 % of requests answered 5xx (by the load balancer or the web servers) for 10 minutes. See docs/aws.md, Alarms.",
                names.stack
            ),
            Source::Math(
                vec![
                    (
                        "elb5xx",
                        measure(
                            "AWS/ApplicationELB",
                            "HTTPCode_ELB_5XX_Count",
                            ("LoadBalancer", lb_dim.clone()),
                            "Sum",
                        ),
                    ),
                    (
                        "target5xx",
                        measure(
                            "AWS/ApplicationELB",
                            "HTTPCode_Target_5XX_Count",
                            ("LoadBalancer", lb_dim.clone()),
                            "Sum",
                        ),
                    ),
                    ("requests", measure("AWS/ApplicationELB", "RequestCount", ("LoadBalancer", lb_dim), "Sum")),
                ],
                "100 * (FILL(elb5xx, 0) + FILL(target5xx, 0)) / requests",
            ),
            ComparisonOperator::GreaterThanThreshold,
            5.0,
            2,
        ),
        alarm(
            "db-storage",
            format!(
                "flipstack {}: the primary database has under 10 % of its {} GB of storage free. See docs/aws.md, Alarms.",
                names.stack, spec.db_storage_gb
            ),
            Source::One(measure("AWS/RDS", "FreeStorageSpace", ("DBInstanceIdentifier", names.database()), "Minimum")),
            ComparisonOperator::LessThanThreshold,
            free_bytes.round(),
            1,
        ),
    ]
}

fn metric(m: &Measure) -> Metric {
    Metric::builder()
        .namespace(m.namespace)
        .metric_name(m.metric)
        .dimensions(Dimension::builder().name(m.dimension.0).value(&m.dimension.1).build())
        .build()
}

async fn put(run: &Run<'_>, want: &AlarmWant) -> Result<(), ProvisionError> {
    let mut req = run
        .c
        .cloudwatch
        .put_metric_alarm()
        .alarm_name(&want.name)
        .alarm_description(&want.description)
        .comparison_operator(want.comparison.clone())
        .threshold(want.threshold)
        .evaluation_periods(want.periods)
        .treat_missing_data("notBreaching")
        .set_alarm_actions(Some(want.actions.clone()))
        .tags(Tag::builder().key(STACK_TAG).value(run.stack()).build());
    req = match &want.source {
        Source::One(m) => req
            .namespace(m.namespace)
            .metric_name(m.metric)
            .dimensions(Dimension::builder().name(m.dimension.0).value(&m.dimension.1).build())
            .statistic(Statistic::from(m.statistic))
            .period(PERIOD),
        Source::Math(queries, expr) => {
            for (id, m) in queries {
                req = req.metrics(
                    MetricDataQuery::builder()
                        .id(*id)
                        .metric_stat(
                            MetricStat::builder()
                                .metric(metric(m))
                                .period(PERIOD)
                                .stat(m.statistic)
                                .unit(StandardUnit::Count)
                                .build(),
                        )
                        .return_data(false)
                        .build(),
                );
            }
            req.metrics(
                MetricDataQuery::builder().id("rate").expression(*expr).label("5xx %").return_data(true).build(),
            )
        }
    };
    req.send().await.map_err(|e| aws_error(format!("writing the alarm {}", want.name), e))?;
    Ok(())
}

/// The stack's alarms as CloudWatch has them (by name prefix; ownership by tag).
pub async fn existing(run: &Run<'_>) -> Result<Vec<MetricAlarm>, ProvisionError> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = run
            .c
            .cloudwatch
            .describe_alarms()
            .alarm_name_prefix(run.names.alarm(""))
            .set_next_token(token)
            .send()
            .await
            .map_err(|e| aws_error("listing the stack's alarms", e))?;
        out.extend(page.metric_alarms().iter().cloned());
        token = page.next_token().map(String::from);
        if token.is_none() {
            return Ok(out);
        }
    }
}

pub async fn ensure(run: &mut Run<'_>, spec: &StackSpec, lb: &LoadBalancer) -> Result<(), ProvisionError> {
    let have = existing(run).await?;
    for want in wanted(run, spec, lb) {
        run.checking(Kind::Alarm, &want.name);
        let current = have.iter().find(|a| a.alarm_name() == Some(want.name.as_str()));
        let go = match current {
            None => {
                let mut notes = vec![want.description.clone()];
                if let Some(topic) = &spec.alarm_topic_arn {
                    notes.push(format!("notifies {topic}"));
                }
                run.create(Kind::Alarm, &want.name, notes)
            }
            Some(a) => {
                let what = if fingerprint_of(a) == want.fingerprint() {
                    Vec::new()
                } else {
                    vec![format!("metric, threshold or actions to: {}", want.fingerprint())]
                };
                run.update(Kind::Alarm, &want.name, what)
            }
        };
        if go {
            put(run, &want).await?;
            run.done(Kind::Alarm, &want.name);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_alarm_reads_back_with_the_same_fingerprint() {
        let want = AlarmWant {
            name: "flipstack-t-alarm-oldest-job".into(),
            description: "d".into(),
            source: Source::One(Measure {
                namespace: "AWS/SQS",
                metric: "ApproximateAgeOfOldestMessage",
                dimension: ("QueueName", "flipstack-t-jobs".into()),
                statistic: "Maximum",
            }),
            comparison: ComparisonOperator::GreaterThanThreshold,
            threshold: 900.0,
            periods: 1,
            actions: vec!["arn:aws:sns:us-east-1:1:ops".into()],
        };
        let read = MetricAlarm::builder()
            .alarm_name(&want.name)
            .namespace("AWS/SQS")
            .metric_name("ApproximateAgeOfOldestMessage")
            .dimensions(Dimension::builder().name("QueueName").value("flipstack-t-jobs").build())
            .statistic(Statistic::Maximum)
            .period(PERIOD)
            .comparison_operator(ComparisonOperator::GreaterThanThreshold)
            .threshold(900.0)
            .evaluation_periods(1)
            .alarm_actions("arn:aws:sns:us-east-1:1:ops")
            .build();
        assert_eq!(fingerprint_of(&read), want.fingerprint());
        let lower = AlarmWant { threshold: 600.0, ..want.clone() };
        assert_ne!(fingerprint_of(&read), lower.fingerprint());
        let silent = AlarmWant { actions: Vec::new(), ..want };
        assert_ne!(fingerprint_of(&read), silent.fingerprint());
    }
}
