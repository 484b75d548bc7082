"""Kubernetes object names for nodes: valid Service names, distinct for distinct nodes."""

from __future__ import annotations

import re

from gateway.cluster.naming import node_object_name, node_url
from gateway.config.nodes import NodeConfig

DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def test_a_plain_node_name_is_kept():
    assert node_object_name("gpu-a") == "vram-gateway-node-gpu-a"


def test_dotted_and_long_names_become_valid_service_names_that_do_not_collide():
    names = ["ip-10-0-0-1.ec2.internal", "ip-10-0-0-1-ec2-internal", "a" * 63, "a" * 62 + "b", "x.y", "x-y"]
    objects = [node_object_name(n) for n in names]
    assert len(set(objects)) == len(names)
    for obj in objects:
        assert len(obj) <= 63 and DNS_1035.fullmatch(obj), obj


def test_the_router_reaches_a_node_by_its_url_or_its_service():
    assert node_url(NodeConfig(name="gpu-a", gpus=[])) == "http://vram-gateway-node-gpu-a:8080"
    assert node_url(NodeConfig(name="gpu-a", gpus=[], url="http://10.0.0.5:9000")) == "http://10.0.0.5:9000"
