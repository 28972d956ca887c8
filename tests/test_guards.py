import socket

import pytest


def test_socket_guard_refuses_remote_connections():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with pytest.raises(OSError, match="offline"):
        sock.connect(("93.184.216.34", 80))
    sock.close()


def test_hub_is_offline():
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"
