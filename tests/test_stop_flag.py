"""The flag the driver sets to stop its fold tasks (raydf.distributed.stop), polled by tasks on the local Ray."""

import time

import ray

from raydf.distributed.stop import StopPoller, start_stop_flag


@ray.remote(num_cpus=1)
def _poll(flag, seconds: float) -> tuple[float, float, bool]:
    """Busy like a fold between batches, polling the flag, for `seconds` or until it is set: (start, end, stopped)."""
    poller, start = StopPoller(flag, interval_s=0.05), time.time()
    stopped = False
    while time.time() - start < seconds and not stopped:
        sum(range(20_000))  # a "batch"
        stopped = poller()
    return start, time.time(), stopped


def test_polling_tasks_keep_their_cpus_and_see_the_flag_once_set(ray_local):
    flag = start_stop_flag()
    # Three 1-CPU tasks on 2 CPUs: the third must wait for a CPU. A poll through ray.wait/ray.get counts as a
    # blocked task, and Ray lent its CPU to the third task, which then trained beside the two (1.7 s in).
    runs = sorted(ray.get([_poll.remote(flag, 3.0) for _ in range(3)]))
    assert not any(stopped for *_, stopped in runs)
    first_end = min(end for _, end, _ in runs[:2])
    assert runs[2][0] >= first_end - 0.05, f"a third task started {first_end - runs[2][0]:.1f} s before a CPU was free"

    # Set while two tasks poll: both end within a few polls, long before their 120 s.
    refs = [_poll.remote(flag, 120.0) for _ in range(2)]
    time.sleep(1.0)
    set_at = time.time()
    ray.get(flag.set.remote())
    runs = ray.get(refs, timeout=60)
    assert all(stopped and end - set_at < 5.0 for _, end, stopped in runs), runs


def test_no_flag_never_stops():
    assert StopPoller(None)() is False
