# fedmsg configuration for the trigger latency benchmark's anchor (benches/trigger_latency.rs).
#
# fedmsg execs every *.py in ./fedmsg.d/ relative to its working directory, so the benchmark
# starts `fedmsg-trigger` with cwd = bench/trigger/, VIRTUAL_ENV unset and HOME pointing at
# an empty temporary directory (no ~/.fedmsg.d). The benchmark's load generator binds a PUB
# socket on a free port and passes it here: fedmsg-trigger connects a SUB to every endpoint
# listed in `endpoints` (fedmsg.core.FedMsgContext.tail_messages).
import os

_publisher = os.environ.get("HARK_BENCH_TRIGGER_ENDPOINT", "tcp://127.0.0.1:19950")

config = dict(
    endpoints={"bench_generator": [_publisher]},
    environment="dev",
    topic_prefix="org.fedoraproject",
    zmq_enabled=True,
    # fedmsg-trigger only receives; no signature checks (hark's direct fedmsg path checks
    # none either).
    sign_messages=False,
    validate_signatures=False,
    # 0 = no limit on the SUB (fedmsg's default).
    high_water_mark=0,
    post_init_sleep=0.0,
    # No replay endpoints, no backlog handling, no status files, no datagrepper.
    replay_endpoints={},
    status_directory=None,
    datagrepper_url=None,
)
