"""Client-side load balancing over service replicas, done by gRPC itself.

Our clients (the gateway, the CLI) dial `Config.service_target(name)`: one address, a DNS name
that resolves to several (a Kubernetes headless Service, a compose service with replicas), or a
list (`services.<name>.addresses`). Every channel they open carries this default service config:

- `round_robin`: one subchannel per resolved address, calls spread over the READY ones;
- `healthCheckConfig`: each subchannel watches the standard `grpc.health.v1.Health/Watch` of
  its server (the services' own health, `""` = the whole server), so a replica that reports
  NOT_SERVING (draining, loading its model, its database lost) or dies leaves the rotation and
  gets no new calls until it is SERVING again.

A call already running on a replica that dies ends with UNAVAILABLE (the gateway answers 503);
the next call goes to another replica.
"""

from __future__ import annotations

import json

HEALTH_SERVICE = ""  # the whole server: every service sets it (services.common.server)


def service_config(health_check: bool = True) -> dict:
    config: dict = {"loadBalancingConfig": [{"round_robin": {}}]}
    if health_check:
        config["healthCheckConfig"] = {"serviceName": HEALTH_SERVICE}
    return config


def channel_options(health_check: bool = True) -> list[tuple[str, object]]:
    """gRPC channel options that give a channel the service config above. `health_check=False`
    keeps round_robin but sends calls to replicas whatever their health (what a health probe
    needs to learn a replica's own answer, NOT_SERVING, rather than "no healthy replica")."""
    return [("grpc.service_config", json.dumps(service_config(health_check)))]
