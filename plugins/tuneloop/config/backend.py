"""The job backend a campaign's jobs run on, as plain settings: ``jobs.make_backend`` builds
the backend from them, and a trigger rebuilds it from them in the triggerer.

Apart from the campaign model, which stays free of storage and paths (the gate reads it).
"""

from __future__ import annotations

from typing import Any

from tuneloop import storage
from tuneloop.config.campaign import Campaign, HyperPodBackend, LocalBackend
from tuneloop.config.paths import absolute


def job_backend_config(campaign: Campaign) -> dict[str, Any]:
    """The settings of the job backend a campaign's jobs run on (``jobs.make_backend`` builds
    it; triggers rebuild it from this in the triggerer)."""
    backend = campaign.backend
    if isinstance(backend, LocalBackend):
        config: dict[str, Any] = {
            "type": "local",
            "root": absolute(backend.jobs_root)
            if backend.jobs_root
            else storage.join(absolute(backend.output_root), campaign.name, "jobs"),
        }
        if backend.device != "auto":
            config["env"] = {"TUNELOOP_DEVICE": backend.device}
        if backend.entrypoint:
            config["entrypoint"] = backend.entrypoint
            config["python_path"] = [absolute(p) for p in backend.python_path]
        return config
    common = {
        "region": backend.region,
        "aws_conn_id": backend.aws_conn_id,
        "instance_type": backend.instance_type,
    }
    if isinstance(backend, HyperPodBackend):
        config = {
            "type": "hyperpod",
            "cluster": backend.cluster,
            "namespace": backend.namespace,
            **common,
        }
        if backend.service_account_name:
            config["service_account_name"] = backend.service_account_name
        return config
    config = {
        "type": "smtj",
        "role_arn": backend.role_arn,
        "max_runtime_seconds": backend.max_runtime_seconds,
        **common,
    }
    # Only what is set, so a campaign without them keeps the configuration (and the triggers
    # serialized with it) it had before they existed.
    optional = {
        "kms_key_id": backend.kms_key_id,
        "subnets": backend.subnets,
        "security_group_ids": backend.security_group_ids,
        "encrypt_inter_container_traffic": backend.encrypt_inter_container_traffic,
        "tags": backend.tags,
    }
    config.update({name: value for name, value in optional.items() if value})
    return config


def aws_connection(campaign: Campaign) -> str | None:
    """The Airflow connection a campaign's AWS calls use; None on the local backend."""
    backend = campaign.backend
    return None if isinstance(backend, LocalBackend) else backend.aws_conn_id
