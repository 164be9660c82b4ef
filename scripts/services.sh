#!/usr/bin/env bash
# Test services on free loopback ports, in a folder of their own:
#   a MariaDB primary and a replica with GTID replication, memcached, and
#   moto_server (S3, SQS, EC2, Auto Scaling, CloudWatch, …).
#
#   services.sh ensure                 install what is missing (apt-get, pip)
#   services.sh up DIR [--only LIST]   start them (LIST: mariadb,memcached,moto); writes DIR/env
#   services.sh down DIR               stop everything started in DIR
#   services.sh stop|start|restart NAME DIR
#                                      one service (NAME: primary, replica, memcached, moto)
#
# Only 127.0.0.1 is ever used; nothing on a standard port (3306, 11211, 5000).
# Every wait is bounded. Tests use DIR/env (shell exports) to find them.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
me="$here/services.sh"

log() { printf 'services: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Waits up to $1 tenths of a second for the command in $2… to succeed.
wait_for() {
  local tries=$1; shift
  for _ in $(seq "$tries"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  return 1
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

ensure() {
  local missing=()
  command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
  command -v memcached >/dev/null || [ -x /usr/bin/memcached ] || missing+=(memcached)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} with apt-get"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
  if ! command -v moto_server >/dev/null; then
    log "installing moto[server] with pip"
    python3 -m pip install --quiet 'moto[server]>=5,<6'
  fi
}

mariadbd_bin() { command -v mariadbd || echo /usr/sbin/mariadbd; }
memcached_bin() { command -v memcached || echo /usr/bin/memcached; }
who() { id -un; }

# A data directory made once by mariadb-install-db and copied for each server.
template() {
  local dir=$1
  local t="${FLIPSTACK_TEST_MARIADB_TEMPLATE:-$dir/mariadb-template}"
  if [ ! -d "$t/mysql" ]; then
    mkdir -p "$t"
    mariadb-install-db --no-defaults --user="$(who)" --datadir="$t" --auth-root-authentication-method=normal \
      --skip-test-db >"$dir/mariadb-install.log" 2>&1 || { cat "$dir/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
  fi
  echo "$t"
}

start_mariadb() { # name dir server_id [port]
  local name=$1 dir=$2 id=$3 port=${4:-}
  local d="$dir/$name"
  if [ ! -d "$d/mysql" ]; then cp -a "$(template "$dir")" "$d"; fi
  [ -n "$port" ] || port=$(cat "$dir/$name.port" 2>/dev/null || free_port)
  echo "$port" >"$dir/$name.port"
  "$(mariadbd_bin)" --no-defaults --user="$(who)" --datadir="$d" --socket="$d/mysqld.sock" --port="$port" \
    --bind-address=127.0.0.1 --pid-file="$d/mysqld.pid" --log-error="$d/error.log" --server-id="$id" \
    --log-bin="$d/binlog" --log-slave-updates=ON --binlog-format=ROW --gtid-strict-mode=ON \
    --skip-name-resolve --max-connections=400 --innodb-buffer-pool-size=64M \
    --innodb-flush-log-at-trx-commit=2 --sync-binlog=0 --character-set-server=utf8mb4 \
    --collation-server=utf8mb4_bin >/dev/null 2>&1 &
  if ! wait_for 300 mariadb-admin --no-defaults --socket="$d/mysqld.sock" -uroot ping; then
    tail -20 "$d/error.log" >&2 || true
    die "MariaDB $name did not start"
  fi
}

sql() { # name dir sql
  mariadb --no-defaults --socket="$2/$1/mysqld.sock" -uroot -e "$3"
}

start_primary() {
  local dir=$1
  start_mariadb primary "$dir" 1
  if [ ! -f "$dir/primary/.users" ]; then
    sql primary "$dir" "CREATE USER IF NOT EXISTS 'flipstack'@'127.0.0.1' IDENTIFIED BY 'flipstack';
      GRANT ALL PRIVILEGES ON *.* TO 'flipstack'@'127.0.0.1' WITH GRANT OPTION;"
    touch "$dir/primary/.users"
  fi
}

start_replica() {
  local dir=$1
  start_mariadb replica "$dir" 2
  if [ ! -f "$dir/replica/.linked" ]; then
    # The replica reads the primary's whole history (users included) by GTID.
    sql replica "$dir" "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=$(cat "$dir/primary.port"),
      MASTER_USER='flipstack', MASTER_PASSWORD='flipstack', MASTER_USE_GTID=slave_pos,
      MASTER_CONNECT_RETRY=1; START SLAVE;"
    touch "$dir/replica/.linked"
  else
    sql replica "$dir" "START SLAVE;" || true
  fi
  replicating() { sql replica "$dir" "SHOW SLAVE STATUS\G" | grep -q 'Slave_IO_Running: Yes'; }
  wait_for 200 replicating || die "the replica did not start replicating"
}

stop_mariadb() { # name dir
  local d="$2/$1"
  if [ -S "$d/mysqld.sock" ]; then
    mariadb-admin --no-defaults --socket="$d/mysqld.sock" -uroot shutdown >/dev/null 2>&1 || true
  fi
  if [ -f "$d/mysqld.pid" ]; then
    local pid; pid=$(cat "$d/mysqld.pid" 2>/dev/null || true)
    [ -n "$pid" ] && wait_for 300 bash -c "! kill -0 $pid" || { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true; }
  fi
}

start_memcached() {
  local dir=$1 port
  port=$(cat "$dir/memcached.port" 2>/dev/null || free_port)
  echo "$port" >"$dir/memcached.port"
  "$(memcached_bin)" -l 127.0.0.1 -p "$port" -U 0 -m 64 -u "$(who)" -d -P "$dir/memcached.pid"
  wait_for 50 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" || die "memcached did not start"
}

stop_pidfile() { # file
  [ -f "$1" ] || return 0
  local pid; pid=$(cat "$1" 2>/dev/null || true)
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  wait_for 50 bash -c "! kill -0 $pid" || kill -9 "$pid" 2>/dev/null || true
  rm -f "$1"
}

start_moto() {
  local dir=$1 port
  port=$(cat "$dir/moto.port" 2>/dev/null || free_port)
  echo "$port" >"$dir/moto.port"
  moto_server -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 &
  echo $! >"$dir/moto.pid"
  wait_for 300 curl -sf "http://127.0.0.1:$port/moto-api/" || { tail -20 "$dir/moto.log" >&2; die "moto_server did not start"; }
  # The bucket and queues that manual runs and the console test use; each test
  # makes its own queue besides, so tests never take each other's jobs.
  AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing python3 - "http://127.0.0.1:$port" >"$dir/moto.queue" <<'PY'
import json, sys, boto3
ep = sys.argv[1]
kw = dict(endpoint_url=ep, region_name="us-east-1")
boto3.client("s3", **kw).create_bucket(Bucket="flipstack-test")
sqs = boto3.client("sqs", **kw)
dlq = sqs.create_queue(QueueName="flipstack-test-dlq")["QueueUrl"]
arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
q = sqs.create_queue(QueueName="flipstack-test", Attributes={
    "VisibilityTimeout": "30",
    "RedrivePolicy": json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": "10"})})["QueueUrl"]
print(q)
PY
}

write_env() {
  local dir=$1 only=$2
  {
    echo "export FLIPSTACK_TEST_SERVICES='$me'"
    echo "export FLIPSTACK_TEST_SERVICES_DIR='$dir'"
    echo "export FLIPSTACK_TEST_MARIADB_TEMPLATE='${FLIPSTACK_TEST_MARIADB_TEMPLATE:-$dir/mariadb-template}'"
    if [[ $only == *mariadb* ]]; then
      echo "export FLIPSTACK_TEST_MYSQL_PRIMARY='mysql://flipstack:flipstack@127.0.0.1:$(cat "$dir/primary.port")'"
      echo "export FLIPSTACK_TEST_MYSQL_REPLICA='mysql://flipstack:flipstack@127.0.0.1:$(cat "$dir/replica.port")'"
    fi
    if [[ $only == *memcached* ]]; then
      echo "export FLIPSTACK_TEST_MEMCACHED='127.0.0.1:$(cat "$dir/memcached.port")'"
    fi
    if [[ $only == *moto* ]]; then
      echo "export FLIPSTACK_TEST_AWS_ENDPOINT='http://127.0.0.1:$(cat "$dir/moto.port")'"
      echo "export FLIPSTACK_TEST_BUCKET='flipstack-test'"
      echo "export FLIPSTACK_TEST_QUEUE_URL='$(cat "$dir/moto.queue")'"
      echo "export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1"
      # The SDKs must never reach for real credentials or the instance metadata service.
      echo "export AWS_EC2_METADATA_DISABLED=true"
    fi
  } >"$dir/env"
}

cmd=${1:-}
case "$cmd" in
  ensure) ensure ;;
  up)
    dir=${2:?usage: services.sh up DIR [--only mariadb,memcached,moto]}
    only="mariadb,memcached,moto"
    if [ "${3:-}" = "--only" ]; then only=${4:?--only needs a list}; fi
    mkdir -p "$dir"
    started=$(date +%s.%N)
    ensure
    if [[ $only == *mariadb* ]]; then start_primary "$dir"; start_replica "$dir"; fi
    if [[ $only == *memcached* ]]; then start_memcached "$dir"; fi
    if [[ $only == *moto* ]]; then start_moto "$dir"; fi
    write_env "$dir" "$only"
    log "up in $(python3 -c "print(f'{$(date +%s.%N)-$started:.1f}')") s ($only) in $dir"
    ;;
  down)
    dir=${2:?usage: services.sh down DIR}
    [ -d "$dir" ] || exit 0
    stop_mariadb replica "$dir"; stop_mariadb primary "$dir"
    stop_pidfile "$dir/memcached.pid"; stop_pidfile "$dir/moto.pid"
    ;;
  stop|start|restart)
    name=${2:?which service}; dir=${3:?which folder}
    if [ "$cmd" != start ]; then
      case "$name" in
        primary|replica) stop_mariadb "$name" "$dir" ;;
        memcached) stop_pidfile "$dir/memcached.pid" ;;
        moto) stop_pidfile "$dir/moto.pid" ;;
        *) die "unknown service $name" ;;
      esac
    fi
    if [ "$cmd" != stop ]; then
      case "$name" in
        primary) start_primary "$dir" ;;
        replica) start_replica "$dir" ;;
        memcached) start_memcached "$dir" ;;
        moto) start_moto "$dir" ;;
        *) die "unknown service $name" ;;
      esac
    fi
    ;;
  *) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
