"""Parsing of the facts ssedeploy reads from hosts."""

from ssedeploy.facts import NginxRevisions


def test_nginx_revisions_are_revisions_or_none():
    fact = NginxRevisions()
    assert fact.process(["live 0123456789abcdef", "served fedcba9876543210"]) == {
        "live": "0123456789abcdef", "served": "fedcba9876543210"}
    # Nothing answers on the revision port, or ssedeploy never put a config live.
    assert fact.process(["live ", "served "]) == {"live": None, "served": None}
    assert fact.process(["live 0123456789abcdef", "served <html>502</html>"])["served"] is None
    assert "/var/lib/x/revision" in fact.command(port=8573, state_dir="/var/lib/x")
