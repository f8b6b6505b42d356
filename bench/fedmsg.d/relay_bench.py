# fedmsg configuration for the relay throughput benchmark's anchor (benches/relay_throughput.rs).
#
# fedmsg execs every *.py in ./fedmsg.d/ relative to its working directory, so the benchmark
# starts `fedmsg-relay` with cwd = bench/ and VIRTUAL_ENV unset (and HOME pointing at an empty
# temporary directory, so no ~/.fedmsg.d leaks in). The endpoints come from the environment
# because the benchmark picks free ports for every run.
import os

_inbound = os.environ.get("HARK_BENCH_RELAY_INBOUND", "tcp://127.0.0.1:19941")
_outbound = os.environ.get("HARK_BENCH_RELAY_OUTBOUND", "tcp://127.0.0.1:19940")

config = dict(
    # fedmsg-relay: SUB.bind(relay_inbound) -> PUB.bind(endpoints["relay_outbound"]).
    endpoints={"relay_outbound": [_outbound]},
    relay_inbound=[_inbound],
    environment="dev",
    topic_prefix="org.fedoraproject",
    name="relay_inbound",
    # What a publisher through this relay would set (connect, not bind); unused by the relay.
    active=True,
    zmq_enabled=True,
    sign_messages=False,
    validate_signatures=False,
    # 0 = no limit on the relay's inbound SUB (fedmsg's default). moksha has no setting for
    # its outbound PUB, which keeps libzmq's default SNDHWM of 1000: that is where
    # fedmsg-relay drops messages when its I/O thread or a subscriber stalls.
    high_water_mark=0,
    post_init_sleep=0.0,
    # No backlog handling, no status files, no datagrepper.
    status_directory=None,
    datagrepper_url=None,
)
