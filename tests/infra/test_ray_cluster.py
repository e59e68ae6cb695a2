"""infra/ray_cluster.py: a step's Ray session, and the flow run's scope that keeps one Ray for every step."""

from __future__ import annotations

import ray

from srcompress.infra.ray_cluster import ray_scope, ray_session


def _gcs() -> str:
    return ray.get_runtime_context().gcs_address


def test_a_session_stops_the_ray_it_started_and_a_scope_keeps_it_for_the_next_step():
    assert not ray.is_initialized()
    with ray_session(None, num_cpus=1) as info:
        assert info.startswith("local (1 CPUs")
    assert not ray.is_initialized()  # outside a scope: one cluster per step

    with ray_scope():
        with ray_session(None, num_cpus=1):
            first = _gcs()
        assert ray.is_initialized()  # the step ended, the run's Ray did not
        with ray_scope():  # nested (a flow called from a flow): only the outermost scope stops it
            with ray_session(None, num_cpus=1):
                assert _gcs() == first  # the second step joined the same cluster
        assert ray.is_initialized()
    assert not ray.is_initialized()  # the scope ended: stopped


def test_a_scope_leaves_a_ray_it_did_not_start_alone():
    ray.init(address="local", num_cpus=1, include_dashboard=False)
    try:
        with ray_scope():
            with ray_session(None):
                pass
        assert ray.is_initialized()  # the test's own Ray (e.g. a caller's session) is not the scope's to stop
    finally:
        ray.shutdown()
