"""free_port: the master port the local launcher and the tests give rank 0 stays clear of the kernel's ephemeral
range, where an outgoing connection could take it before rank 0 binds it (a CI run failed with EADDRINUSE so)."""

from __future__ import annotations

import socket

from megatron_llm.launch.local import LOWEST_PORT, ephemeral_port_range, free_port


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_port_is_outside_the_ephemeral_range_and_bindable():
    lo, hi = ephemeral_port_range()
    ports = {free_port() for _ in range(50)}
    for port in ports:
        assert not lo <= port <= hi and LOWEST_PORT <= port <= 65535, port
        assert _bindable(port)
    assert len(ports) > 1  # random: concurrent callers (xdist workers) rarely collide


def test_range_file_is_read_and_respected(tmp_path):
    f = tmp_path / "range"
    f.write_text(f"{LOWEST_PORT}\t65000\n")  # leaves only 65001..65535
    assert ephemeral_port_range(str(f)) == (LOWEST_PORT, 65000)
    for _ in range(20):
        assert 65001 <= free_port(range_file=str(f)) <= 65535


def test_taken_ports_are_skipped(tmp_path):
    f = tmp_path / "range"
    f.write_text(f"{LOWEST_PORT}\t65533\n")  # two candidates, one held open here
    with socket.socket() as held:
        held.bind(("127.0.0.1", 65534))
        held.listen()
        assert {free_port(range_file=str(f)) for _ in range(20)} == {65535}


def test_no_port_outside_the_range_falls_back_to_the_kernel(tmp_path):
    f = tmp_path / "range"
    f.write_text("1024\t65535\n")
    assert _bindable(free_port(range_file=str(f)))


def test_unreadable_range_file_means_linux_default(tmp_path):
    assert ephemeral_port_range(str(tmp_path / "absent")) == (32768, 60999)
