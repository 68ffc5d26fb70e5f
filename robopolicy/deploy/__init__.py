"""Real-time deployment: the ZeroMQ policy server, the robot-side control loop and their protocol.

Import-light on purpose (numpy, msgpack, pyzmq; torch only when a torch checkpoint is served).
"""

from robopolicy.deploy.adapter import PolicyAdapter, adapter_from_policy, load_policy_adapter
from robopolicy.deploy.client import CommandRecord, ControlLoop, ControlLoopConfig, PolicyClient
from robopolicy.deploy.keys import ClientCurve, ServerCurve, generate_keys
from robopolicy.deploy.protocol import PROTOCOL_VERSION, PolicySpec, ProtocolError, decode, encode
from robopolicy.deploy.safety import EStop, SafetyFilter, Watchdog
from robopolicy.deploy.scheduling import ChunkScheduler
from robopolicy.deploy.server import PolicyServer, serve, start_server_process

__all__ = [
    "PROTOCOL_VERSION", "ChunkScheduler", "ClientCurve", "CommandRecord", "ControlLoop", "ControlLoopConfig",
    "EStop", "PolicyAdapter", "PolicyClient", "PolicyServer", "PolicySpec", "ProtocolError", "SafetyFilter",
    "ServerCurve", "Watchdog", "adapter_from_policy", "decode", "encode", "generate_keys", "load_policy_adapter",
    "serve", "start_server_process",
]
