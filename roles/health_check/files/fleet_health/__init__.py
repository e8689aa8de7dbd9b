"""fleet health checker: one run checks a host, logs a JSON line, writes metrics, alerts on change.

Installed by the `health_check` role beside the slot engine's `fleet_slots` package (whose state,
lock and engine modules it uses) and run by cron through /usr/local/sbin/fleet-health; standard
library only (Debian 12's Python 3.11):

    fleet-health --config /etc/fleet/health.json --once            # what cron runs
    python3 -m fleet_health --once --no-webhook --gpu --log-file -  # a look at a GPU box, no config

Modules, one per part of a run: config (settings), common (findings, metrics, commands, time),
services (health, slots, self-healing), host (TLS, disk, memory, backup), gpu (nvidia-smi, XID),
alerts (state, redaction, webhook, transitions), cli (one run, the command line).

What one run checks:

- every service in the config: GET <health path> on its live slot (the port comes from the deploy
  state file /var/lib/fleet/state/<service>.json, never guessed) and through nginx with the
  service's server name as Host; HTTP status, the body's `status` field, latency thresholds;
- GPUs through `nvidia-smi --query-gpu` / `--query-remapped-rows`: count against the expected
  count, temperature, uncorrected ECC errors, retired pages pending, remapped rows pending or
  failed; XID errors in the kernel log since the last run (serious ones critical, others warnings);
  nvidia-smi missing, failing or hanging is itself critical;
- each service's slots: a move an interrupted deploy left pending, an idle slot still running
  outside a deploy, a slot port listened on by anything but that slot's unit (`ss -ltnp`);
- TLS certificates (certbot's and the copies of the other hosts): days until they expire;
- disk and inode headroom, memory headroom, the last backup (status and age).

Every external command runs under a timeout in its own process group, killed on expiry; checks
run in parallel threads, so a hung nvidia-smi costs its timeout and no more.

What it produces: one JSON line per run appended to the log, exit code 0 OK / 1 WARN /
2 CRITICAL / 3 UNKNOWN, Prometheus text metrics written atomically into a node_exporter textfile
directory, and Slack-compatible webhook messages ({"text": ...}) only when something changes: a
new or worse problem (ALERT) or a cleared one (RECOVERY), de-duplicated across runs through a
small state file, with retries inside a bounded total time. A problem is declared recovered only
after M clean runs in a row (webhook.recover_after), so a value hovering at a threshold does not
alert and recover every run. Optional self-healing restarts a live slot whose health check failed
hard (refused, timed out, 5xx; not slow, not a wrong body) N runs in a row while systemd still
reports it active (a hang systemd cannot see), one slot per run, at most max_per_hour restarts of a
service in any hour; past that it gives up with a critical alert until the service recovers.

`--no-webhook` makes a run read-only: nothing is sent, the state file is neither written nor
locked, and nothing is restarted, so a look by hand never eats an alert that cron should send.
The webhook URL is a secret: it is read from the (0600) config and never logged, printed, kept in
the state file or sent in an alert (see redact), nor is the password of any URL a message quotes
(a backup repository's rest:https://user:password@...).
"""
