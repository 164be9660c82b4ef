//! The walk shared by `plan` and `up`: each step observes one resource,
//! compares it with what the stack needs, records the [`Action`], and (in
//! `up`) acts. One walk for both is what keeps `plan` honest about `up`.

use std::future::Future;
use std::time::Instant;

use super::clients::Clients;
use super::names::Names;
use super::storage::{Config, Secrets};
use super::{
    Action, Change, Event, Kind, Plan, Progress, ProvisionError, StackSpec, Step, Waits, access, alarms, balancer,
    compute, data, network, no_progress, storage,
};

pub struct Run<'a> {
    pub c: Clients,
    pub names: Names,
    /// False in `plan`: observe and record, change nothing.
    pub apply: bool,
    pub progress: Progress<'a>,
    pub actions: Vec<Action>,
    pub waits: Waits,
}

impl<'a> Run<'a> {
    pub async fn start(
        aws: &flipstack_aws::AwsSettings,
        stack: &str,
        apply: bool,
        progress: Progress<'a>,
        waits: Waits,
    ) -> Result<Run<'a>, ProvisionError> {
        let c = Clients::new(aws).await;
        let (account, partition) = c.identity().await?;
        let names = Names { stack: stack.to_owned(), account, partition, region: c.region.clone() };
        Ok(Run { c, names, apply, progress, actions: Vec::new(), waits })
    }

    pub fn stack(&self) -> &str {
        &self.names.stack
    }

    pub fn emit(&self, kind: Kind, name: &str, step: Step) {
        (self.progress)(&Event { kind, name: name.to_owned(), step });
    }

    pub fn checking(&self, kind: Kind, name: &str) {
        self.emit(kind, name, Step::Checking);
    }

    /// Records that the resource is (to be) created; true when the caller
    /// should create it now.
    pub fn create(&mut self, kind: Kind, name: &str, notes: Vec<String>) -> bool {
        self.actions.push(Action { kind, name: name.to_owned(), change: Change::Create, notes, warnings: Vec::new() });
        if self.apply {
            self.emit(kind, name, Step::Creating);
        }
        self.apply
    }

    /// Records the differences to correct (or a keep, when there are none);
    /// true when the caller should correct them now.
    pub fn update(&mut self, kind: Kind, name: &str, what: Vec<String>) -> bool {
        if what.is_empty() {
            self.keep(kind, name);
            return false;
        }
        self.actions.push(Action {
            kind,
            name: name.to_owned(),
            change: Change::Update(what.clone()),
            notes: Vec::new(),
            warnings: Vec::new(),
        });
        if self.apply {
            self.emit(kind, name, Step::Updating(what));
        }
        self.apply
    }

    pub fn keep(&mut self, kind: Kind, name: &str) {
        self.actions.push(Action {
            kind,
            name: name.to_owned(),
            change: Change::Keep,
            notes: Vec::new(),
            warnings: Vec::new(),
        });
        self.emit(kind, name, Step::Exists);
    }

    pub fn done(&self, kind: Kind, name: &str) {
        self.emit(kind, name, Step::Done);
    }

    /// A warning on the resource's action, also sent as an event.
    pub fn warn(&mut self, kind: Kind, name: &str, message: String) {
        if let Some(a) = self.actions.iter_mut().rev().find(|a| a.kind == kind && a.name == name) {
            a.warnings.push(message.clone());
        }
        self.emit(kind, name, Step::Warning(message));
    }

    /// Polls `check` until it yields a value, reporting each wait.
    pub async fn wait_for<T, F, Fut>(
        &self,
        kind: Kind,
        name: &str,
        what: &str,
        mut check: F,
    ) -> Result<T, ProvisionError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>, ProvisionError>>,
    {
        let started = Instant::now();
        loop {
            if let Some(v) = check().await? {
                return Ok(v);
            }
            let elapsed = started.elapsed();
            if elapsed >= self.waits.timeout {
                return Err(ProvisionError::Timeout {
                    what: format!("the {kind} {name} {what}"),
                    secs: elapsed.as_secs(),
                });
            }
            self.emit(kind, name, Step::Waiting { what: what.to_owned(), elapsed_secs: elapsed.as_secs() });
            tokio::time::sleep(self.waits.poll).await;
        }
    }

    /// An id that exists only after `up` creates it: in a plan, a
    /// placeholder that compares unequal to every real id.
    pub fn pending(what: &str) -> String {
        format!("(new {what})")
    }

    pub fn into_plan(self) -> Plan {
        Plan { stack: self.names.stack, region: self.names.region, actions: self.actions }
    }
}

/// What `up` would do, without changing anything.
pub async fn plan(spec: &StackSpec) -> Result<Plan, ProvisionError> {
    Box::pin(walk(spec, false, &no_progress)).await
}

/// Creates or corrects every resource of the stack; returns what it did
/// (a plan whose actions all `Keep` when nothing needed doing).
pub async fn up(spec: &StackSpec, progress: Progress<'_>) -> Result<Plan, ProvisionError> {
    Box::pin(walk(spec, true, progress)).await
}

async fn walk(spec: &StackSpec, apply: bool, progress: Progress<'_>) -> Result<Plan, ProvisionError> {
    spec.validate()?;
    // `up` refuses a release the instances could not run before it changes
    // anything; a plan shows why instead.
    let release = match Box::pin(storage::checked_release(spec)).await {
        Err(e) if apply => return Err(e),
        checked => checked,
    };
    // Each step is boxed: the SDK's futures are large, and nested unboxed
    // they overflow a thread's stack in debug builds.
    let mut run = Box::pin(Run::start(&spec.aws, &spec.stack, apply, progress, spec.waits)).await?;

    let net = Box::pin(network::locate(&run, spec)).await?;
    let groups = Box::pin(network::ensure_security_groups(&mut run, spec, &net)).await?;

    Box::pin(storage::ensure_bucket(&mut run)).await?;
    let release = Box::pin(storage::ensure_release(&mut run, release)).await?;
    let queues = Box::pin(storage::ensure_queues(&mut run)).await?;
    Box::pin(access::ensure_instance_role(&mut run, spec)).await?;

    // The database password and admin token live in the stack's configuration
    // object; a new stack (or one whose object was lost) gets new ones.
    let previous = Box::pin(storage::read_config(&run)).await?;
    let known = previous.as_ref().and_then(Secrets::from_config);
    let secrets_known = known.is_some();
    let secrets = known.unwrap_or_else(Secrets::generate);

    let db = Box::pin(data::ensure_databases(&mut run, spec, &net, &groups, &secrets, secrets_known)).await?;
    let cache = Box::pin(data::ensure_cache(&mut run, spec, &net, &groups)).await?;
    let lb = Box::pin(balancer::ensure(&mut run, spec, &net, &groups)).await?;

    let config = Config::render(&run.names, spec, &secrets, &db, &cache, &queues, &lb);
    Box::pin(storage::ensure_config(&mut run, config.as_ref(), previous.as_ref())).await?;

    Box::pin(compute::ensure_launch_templates(&mut run, spec, &groups, release.as_deref())).await?;
    Box::pin(compute::ensure_groups(&mut run, spec, &net, &lb)).await?;
    Box::pin(alarms::ensure(&mut run, spec, &lb)).await?;

    Ok(run.into_plan())
}
