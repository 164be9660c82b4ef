//! The metadata store (RDS MariaDB primary and a read replica linked to it)
//! and the gallery cache (ElastiCache memcached), each in its own subnet group
//! and security group.

use std::collections::BTreeSet;

use aws_sdk_elasticache::types::CacheCluster;
use aws_sdk_rds::types::DbInstance;

use super::clients::{aws_error, code_in};
use super::names::{ensure_ours, owner};
use super::network::{Groups, Network};
use super::run::Run;
use super::storage::{DB_NAME, DB_USER, Secrets};
use super::{Kind, ProvisionError, StackSpec};
use crate::fleet::STACK_TAG;

/// The metadata store uses MariaDB's GTID functions (`@@last_gtid`,
/// `MASTER_GTID_WAIT`): MySQL will not do.
pub const DB_ENGINE: &str = "mariadb";
/// Days of automated backups; read replicas need at least one.
const BACKUP_DAYS: i32 = 7;

/// Endpoints as (host, port); None while the instance does not exist (plan).
#[derive(Debug, Clone, Default)]
pub struct Databases {
    pub primary: Option<(String, i32)>,
    pub replica: Option<(String, i32)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheEndpoint {
    /// `memcache://host:port[,host:port…]`
    Nodes(String),
    /// Not created yet (plan).
    Pending,
    /// The cluster is available but its endpoint was not reported.
    Unreported,
}

fn rds_tag(stack: &str) -> aws_sdk_rds::types::Tag {
    aws_sdk_rds::types::Tag::builder().key(STACK_TAG).value(stack).build()
}

fn cache_tag(stack: &str) -> aws_sdk_elasticache::types::Tag {
    aws_sdk_elasticache::types::Tag::builder().key(STACK_TAG).value(stack).build()
}

pub async fn describe_db(run: &Run<'_>, id: &str) -> Result<Option<DbInstance>, ProvisionError> {
    match run.c.rds.describe_db_instances().db_instance_identifier(id).send().await {
        Ok(out) => Ok(out.db_instances().first().cloned()),
        Err(e) if code_in(&e, &["DBInstanceNotFound"]) => Ok(None),
        Err(e) => Err(aws_error(format!("looking for the database {id}"), e)),
    }
}

fn db_owner(db: &DbInstance, stack: &str) -> super::names::Owner {
    owner(db.tag_list().iter().map(|t| (t.key().unwrap_or(""), t.value().unwrap_or(""))), stack)
}

fn db_groups(db: &DbInstance) -> BTreeSet<String> {
    db.vpc_security_groups().iter().filter_map(|g| g.vpc_security_group_id()).map(String::from).collect()
}

fn endpoint(db: &DbInstance) -> Option<(String, i32)> {
    let e = db.endpoint()?;
    Some((e.address()?.to_owned(), e.port().unwrap_or(3306)))
}

async fn wait_available(run: &Run<'_>, kind: Kind, id: &str) -> Result<DbInstance, ProvisionError> {
    run.wait_for(kind, id, "to become available", || async {
        match describe_db(run, id).await? {
            Some(db) if db.db_instance_status() == Some("available") && endpoint(&db).is_some() => {
                Ok(Some(db))
            }
            Some(db) if matches!(db.db_instance_status(), Some("failed" | "deleting" | "incompatible-parameters" | "storage-full")) => {
                Err(ProvisionError::Invalid(format!(
                    "the {kind} {id} is {}: look at it in the RDS console, delete it if it cannot recover, and run `up` again",
                    db.db_instance_status().unwrap_or_default()
                )))
            }
            Some(_) => Ok(None),
            None => Err(ProvisionError::Invalid(format!(
                "the {kind} {id} disappeared while waiting for it; run `up` again"
            ))),
        }
    })
    .await
}

async fn ensure_db_subnet_group(run: &mut Run<'_>, net: &Network) -> Result<(), ProvisionError> {
    let name = run.names.db_subnet_group();
    let stack = run.stack().to_owned();
    let rds = run.c.rds.clone();
    run.checking(Kind::DbSubnetGroup, &name);
    let found = match rds.describe_db_subnet_groups().db_subnet_group_name(&name).send().await {
        Ok(out) => out.db_subnet_groups().first().cloned(),
        Err(e) if code_in(&e, &["DBSubnetGroupNotFoundFault"]) => None,
        Err(e) => {
            return Err(aws_error(format!("looking for the DB subnet group {name}"), e));
        }
    };
    let wanted: BTreeSet<String> = net.subnets.iter().cloned().collect();
    match found {
        None => {
            if run.create(Kind::DbSubnetGroup, &name, vec![format!("subnets {}", net.subnets.join(", "))]) {
                rds.create_db_subnet_group()
                    .db_subnet_group_name(&name)
                    .db_subnet_group_description(format!("flipstack {stack}: databases"))
                    .set_subnet_ids(Some(net.subnets.clone()))
                    .tags(rds_tag(&stack))
                    .send()
                    .await
                    .map_err(|e| aws_error(format!("creating the DB subnet group {name}"), e))?;
                run.done(Kind::DbSubnetGroup, &name);
            }
        }
        Some(g) => {
            let arn = g.db_subnet_group_arn().unwrap_or_default().to_owned();
            let tags = rds
                .list_tags_for_resource()
                .resource_name(&arn)
                .send()
                .await
                .map_err(|e| aws_error(format!("reading the tags of {name}"), e))?;
            let tags = tags.tag_list().iter().map(|t| (t.key().unwrap_or(""), t.value().unwrap_or("")));
            ensure_ours(Kind::DbSubnetGroup, &name, owner(tags, &stack), &stack)?;
            let have: BTreeSet<String> =
                g.subnets().iter().filter_map(|s| s.subnet_identifier()).map(String::from).collect();
            // Existing subnets may stay (instances live in them); only add.
            let missing: Vec<&String> = wanted.difference(&have).collect();
            let what = missing.iter().map(|s| format!("add subnet {s}")).collect();
            if run.update(Kind::DbSubnetGroup, &name, what) {
                rds.modify_db_subnet_group()
                    .db_subnet_group_name(&name)
                    .set_subnet_ids(Some(have.union(&wanted).cloned().collect()))
                    .send()
                    .await
                    .map_err(|e| aws_error(format!("updating the DB subnet group {name}"), e))?;
                run.done(Kind::DbSubnetGroup, &name);
            }
        }
    }
    Ok(())
}

pub async fn ensure_databases(
    run: &mut Run<'_>,
    spec: &StackSpec,
    net: &Network,
    groups: &Groups,
    secrets: &Secrets,
    secrets_known: bool,
) -> Result<Databases, ProvisionError> {
    ensure_db_subnet_group(run, net).await?;
    let stack = run.stack().to_owned();
    let rds = run.c.rds.clone();
    let sg = groups.id("db");
    let (id, replica_id) = (run.names.database(), run.names.replica());
    let mut out = Databases::default();

    run.checking(Kind::Database, &id);
    match describe_db(run, &id).await? {
        None => {
            let notes = vec![format!(
                "MariaDB {} on {}, {} GB encrypted, private, {BACKUP_DAYS} days of backups, security group {}",
                spec.db_engine_version,
                spec.db_instance_class,
                spec.db_storage_gb,
                run.names.security_group("db")
            )];
            if run.create(Kind::Database, &id, notes) {
                rds.create_db_instance()
                    .db_instance_identifier(&id)
                    .engine(DB_ENGINE)
                    .engine_version(&spec.db_engine_version)
                    .db_instance_class(&spec.db_instance_class)
                    .allocated_storage(spec.db_storage_gb)
                    .storage_type("gp3")
                    .storage_encrypted(true)
                    .master_username(DB_USER)
                    .master_user_password(&secrets.db_password)
                    .db_name(DB_NAME)
                    .db_subnet_group_name(run.names.db_subnet_group())
                    .vpc_security_group_ids(&sg)
                    .publicly_accessible(false)
                    .backup_retention_period(BACKUP_DAYS)
                    .copy_tags_to_snapshot(true)
                    .auto_minor_version_upgrade(true)
                    .tags(rds_tag(&stack))
                    .send()
                    .await
                    .map_err(|e| aws_error(format!("creating the database {id}"), e))?;
                let db = wait_available(run, Kind::Database, &id).await?;
                out.primary = endpoint(&db);
                run.done(Kind::Database, &id);
            }
        }
        Some(db) => {
            ensure_ours(Kind::Database, &id, db_owner(&db, &stack), &stack)?;
            if db.engine() != Some(DB_ENGINE) {
                return Err(ProvisionError::Conflict(format!(
                    "the database {id} runs {}, but flipstack needs {DB_ENGINE} (it uses MariaDB's GTID functions); move its data out, delete it, and run `up` again",
                    db.engine().unwrap_or("an unknown engine")
                )));
            }
            let mut what = Vec::new();
            if db.db_instance_class() != Some(spec.db_instance_class.as_str()) {
                what.push(format!("instance class to {} (restarts it)", spec.db_instance_class));
            }
            if db_groups(&db) != BTreeSet::from([sg.clone()]) {
                what.push(format!("security groups to {}", run.names.security_group("db")));
            }
            if db.backup_retention_period().unwrap_or(0) < 1 {
                what.push(format!("keep {BACKUP_DAYS} days of backups (the replica needs them)"));
            }
            if !secrets_known {
                what.push("reset the master password: the stack's configuration, which held it, is missing".into());
            }
            if run.update(Kind::Database, &id, what) {
                let mut req = rds
                    .modify_db_instance()
                    .db_instance_identifier(&id)
                    .db_instance_class(&spec.db_instance_class)
                    .vpc_security_group_ids(&sg)
                    .backup_retention_period(db.backup_retention_period().unwrap_or(0).max(BACKUP_DAYS))
                    .apply_immediately(true);
                if !secrets_known {
                    req = req.master_user_password(&secrets.db_password);
                }
                req.send().await.map_err(|e| aws_error(format!("updating the database {id}"), e))?;
                let db = wait_available(run, Kind::Database, &id).await?;
                out.primary = endpoint(&db);
                run.done(Kind::Database, &id);
            } else if run.apply && db.db_instance_status() != Some("available") {
                // Created by an earlier run that stopped while waiting.
                let db = wait_available(run, Kind::Database, &id).await?;
                out.primary = endpoint(&db);
            } else {
                out.primary = endpoint(&db);
            }
        }
    }

    run.checking(Kind::DatabaseReplica, &replica_id);
    match describe_db(run, &replica_id).await? {
        None => {
            let notes = vec![format!("read replica of {id}, same class and security group")];
            if run.create(Kind::DatabaseReplica, &replica_id, notes) {
                rds.create_db_instance_read_replica()
                    .db_instance_identifier(&replica_id)
                    .source_db_instance_identifier(&id)
                    .db_instance_class(&spec.db_instance_class)
                    .db_subnet_group_name(run.names.db_subnet_group())
                    .vpc_security_group_ids(&sg)
                    .publicly_accessible(false)
                    .auto_minor_version_upgrade(true)
                    .tags(rds_tag(&stack))
                    .send()
                    .await
                    .map_err(|e| aws_error(format!("creating the read replica {replica_id}"), e))?;
                let db = wait_available(run, Kind::DatabaseReplica, &replica_id).await?;
                out.replica = endpoint(&db);
                run.done(Kind::DatabaseReplica, &replica_id);
            }
        }
        Some(db) => {
            ensure_ours(Kind::DatabaseReplica, &replica_id, db_owner(&db, &stack), &stack)?;
            // The source is named by identifier, or by ARN across regions.
            let source = db.read_replica_source_db_instance_identifier().unwrap_or("");
            if source != id && !source.ends_with(&format!(":db:{id}")) {
                return Err(ProvisionError::Conflict(format!(
                    "{replica_id} exists but is not a read replica of {id} (its source: {:?}); delete it and run `up` again to create the replica",
                    source
                )));
            }
            let mut what = Vec::new();
            if db.db_instance_class() != Some(spec.db_instance_class.as_str()) {
                what.push(format!("instance class to {} (restarts it)", spec.db_instance_class));
            }
            if db_groups(&db) != BTreeSet::from([sg.clone()]) {
                what.push(format!("security groups to {}", run.names.security_group("db")));
            }
            if run.update(Kind::DatabaseReplica, &replica_id, what) {
                rds.modify_db_instance()
                    .db_instance_identifier(&replica_id)
                    .db_instance_class(&spec.db_instance_class)
                    .vpc_security_group_ids(&sg)
                    .apply_immediately(true)
                    .send()
                    .await
                    .map_err(|e| aws_error(format!("updating the read replica {replica_id}"), e))?;
                let db = wait_available(run, Kind::DatabaseReplica, &replica_id).await?;
                out.replica = endpoint(&db);
                run.done(Kind::DatabaseReplica, &replica_id);
            } else if run.apply && db.db_instance_status() != Some("available") {
                let db = wait_available(run, Kind::DatabaseReplica, &replica_id).await?;
                out.replica = endpoint(&db);
            } else {
                out.replica = endpoint(&db);
            }
        }
    }
    Ok(out)
}

pub async fn describe_cache(run: &Run<'_>, id: &str) -> Result<Option<CacheCluster>, ProvisionError> {
    match run.c.cache.describe_cache_clusters().cache_cluster_id(id).show_cache_node_info(true).send().await {
        Ok(out) => Ok(out.cache_clusters().first().cloned()),
        Err(e) if code_in(&e, &["CacheClusterNotFound"]) => Ok(None),
        Err(e) => Err(aws_error(format!("looking for the cache cluster {id}"), e)),
    }
}

pub async fn cache_tags(run: &Run<'_>, arn: &str) -> Result<Vec<(String, String)>, ProvisionError> {
    let out = run
        .c
        .cache
        .list_tags_for_resource()
        .resource_name(arn)
        .send()
        .await
        .map_err(|e| aws_error(format!("reading the tags of {arn}"), e))?;
    Ok(out.tag_list().iter().map(|t| (t.key().unwrap_or("").to_owned(), t.value().unwrap_or("").to_owned())).collect())
}

fn cache_endpoint(c: &CacheCluster) -> CacheEndpoint {
    let nodes: Vec<String> = c
        .cache_nodes()
        .iter()
        .filter_map(|n| n.endpoint())
        .filter_map(|e| Some(format!("{}:{}", e.address()?, e.port().unwrap_or(11211))))
        .collect();
    if !nodes.is_empty() {
        return CacheEndpoint::Nodes(format!("memcache://{}", nodes.join(",")));
    }
    match c.configuration_endpoint().and_then(|e| Some((e.address()?, e.port().unwrap_or(11211)))) {
        Some((host, port)) => CacheEndpoint::Nodes(format!("memcache://{host}:{port}")),
        None => CacheEndpoint::Unreported,
    }
}

async fn ensure_cache_subnet_group(run: &mut Run<'_>, net: &Network) -> Result<(), ProvisionError> {
    let name = run.names.cache_subnet_group();
    let stack = run.stack().to_owned();
    let ec = run.c.cache.clone();
    run.checking(Kind::CacheSubnetGroup, &name);
    let found = match ec.describe_cache_subnet_groups().cache_subnet_group_name(&name).send().await {
        Ok(out) => out.cache_subnet_groups().first().cloned(),
        Err(e) if code_in(&e, &["CacheSubnetGroupNotFoundFault"]) => None,
        Err(e) => {
            return Err(aws_error(format!("looking for the cache subnet group {name}"), e));
        }
    };
    match found {
        None => {
            if run.create(Kind::CacheSubnetGroup, &name, vec![format!("subnets {}", net.subnets.join(", "))]) {
                ec.create_cache_subnet_group()
                    .cache_subnet_group_name(&name)
                    .cache_subnet_group_description(format!("flipstack {stack}: cache"))
                    .set_subnet_ids(Some(net.subnets.clone()))
                    .tags(cache_tag(&stack))
                    .send()
                    .await
                    .map_err(|e| aws_error(format!("creating the cache subnet group {name}"), e))?;
                run.done(Kind::CacheSubnetGroup, &name);
            }
        }
        Some(g) => {
            let tags = cache_tags(run, g.arn().unwrap_or_default()).await?;
            ensure_ours(
                Kind::CacheSubnetGroup,
                &name,
                owner(tags.iter().map(|(k, v)| (k.as_str(), v.as_str())), &stack),
                &stack,
            )?;
            let have: BTreeSet<String> =
                g.subnets().iter().filter_map(|s| s.subnet_identifier()).map(String::from).collect();
            let wanted: BTreeSet<String> = net.subnets.iter().cloned().collect();
            let what = wanted.difference(&have).map(|s| format!("add subnet {s}")).collect();
            if run.update(Kind::CacheSubnetGroup, &name, what) {
                ec.modify_cache_subnet_group()
                    .cache_subnet_group_name(&name)
                    .set_subnet_ids(Some(have.union(&wanted).cloned().collect()))
                    .send()
                    .await
                    .map_err(|e| aws_error(format!("updating the cache subnet group {name}"), e))?;
                run.done(Kind::CacheSubnetGroup, &name);
            }
        }
    }
    Ok(())
}

async fn wait_cache(run: &Run<'_>, id: &str) -> Result<CacheCluster, ProvisionError> {
    run.wait_for(Kind::CacheCluster, id, "to become available", || async {
        match describe_cache(run, id).await? {
            Some(c) if c.cache_cluster_status() == Some("available") => Ok(Some(c)),
            Some(c) if matches!(c.cache_cluster_status(), Some("deleting" | "deleted" | "incompatible-network")) => {
                Err(ProvisionError::Invalid(format!(
                    "the cache cluster {id} is {}; wait for it to go, then run `up` again",
                    c.cache_cluster_status().unwrap_or_default()
                )))
            }
            Some(_) => Ok(None),
            None => Err(ProvisionError::Invalid(format!(
                "the cache cluster {id} disappeared while waiting for it; run `up` again"
            ))),
        }
    })
    .await
}

pub async fn ensure_cache(
    run: &mut Run<'_>,
    spec: &StackSpec,
    net: &Network,
    groups: &Groups,
) -> Result<CacheEndpoint, ProvisionError> {
    ensure_cache_subnet_group(run, net).await?;
    let stack = run.stack().to_owned();
    let ec = run.c.cache.clone();
    let id = run.names.cache_cluster();
    let sg = groups.id("cache");
    run.checking(Kind::CacheCluster, &id);
    let cluster = match describe_cache(run, &id).await? {
        None => {
            let notes = vec![format!(
                "memcached, {} × {}, security group {}",
                spec.cache_nodes,
                spec.cache_node_type,
                run.names.security_group("cache")
            )];
            if !run.create(Kind::CacheCluster, &id, notes) {
                return Ok(CacheEndpoint::Pending);
            }
            ec.create_cache_cluster()
                .cache_cluster_id(&id)
                .engine("memcached")
                .cache_node_type(&spec.cache_node_type)
                .num_cache_nodes(spec.cache_nodes)
                .cache_subnet_group_name(run.names.cache_subnet_group())
                .security_group_ids(&sg)
                .tags(cache_tag(&stack))
                .send()
                .await
                .map_err(|e| aws_error(format!("creating the cache cluster {id}"), e))?;
            let c = wait_cache(run, &id).await?;
            run.done(Kind::CacheCluster, &id);
            c
        }
        Some(c) => {
            let tags = cache_tags(run, c.arn().unwrap_or_default()).await?;
            ensure_ours(
                Kind::CacheCluster,
                &id,
                owner(tags.iter().map(|(k, v)| (k.as_str(), v.as_str())), &stack),
                &stack,
            )?;
            if c.engine() != Some("memcached") {
                return Err(ProvisionError::Conflict(format!(
                    "the cache cluster {id} runs {}, but flipstack's cache speaks memcached; delete it and run `up` again",
                    c.engine().unwrap_or("an unknown engine")
                )));
            }
            let mut what = Vec::new();
            if c.cache_node_type() != Some(spec.cache_node_type.as_str()) {
                what.push(format!("node type to {}", spec.cache_node_type));
            }
            if c.num_cache_nodes().is_some_and(|n| n < spec.cache_nodes) {
                what.push(format!("grow to {} nodes", spec.cache_nodes));
            }
            let have: BTreeSet<String> =
                c.security_groups().iter().filter_map(|g| g.security_group_id()).map(String::from).collect();
            // An endpoint that does not report the groups (moto) cannot be compared.
            if !have.is_empty() && have != BTreeSet::from([sg.clone()]) {
                what.push(format!("security groups to {}", run.names.security_group("cache")));
            }
            if run.update(Kind::CacheCluster, &id, what) {
                ec.modify_cache_cluster()
                    .cache_cluster_id(&id)
                    .cache_node_type(&spec.cache_node_type)
                    .num_cache_nodes(c.num_cache_nodes().unwrap_or(1).max(spec.cache_nodes))
                    .security_group_ids(&sg)
                    .apply_immediately(true)
                    .send()
                    .await
                    .map_err(|e| aws_error(format!("updating the cache cluster {id}"), e))?;
                let c = wait_cache(run, &id).await?;
                run.done(Kind::CacheCluster, &id);
                c
            } else if run.apply && c.cache_cluster_status() != Some("available") {
                wait_cache(run, &id).await?
            } else {
                c
            }
        }
    };
    let endpoint = cache_endpoint(&cluster);
    if endpoint == CacheEndpoint::Unreported {
        run.warn(
            Kind::CacheCluster,
            &id,
            "the cluster reported no endpoint, so the configuration leaves FLIPSTACK_CACHE_URL out (the servers use their in-process cache); run `up` again once the cluster lists its nodes".into(),
        );
    }
    Ok(endpoint)
}
