"""REDIS_URL's forms, parsed once (shared/infra/redisconn.py ``RedisTarget``) and translated for kombu."""

from __future__ import annotations

import ssl

import pytest

from shared.infra.redisconn import RedisTarget, TLSError, transient_cause


def test_plain_and_tls_urls() -> None:
    plain = RedisTarget.parse("redis://:p%2Fw@10.0.0.5:6380/2")
    assert plain.hosts == (("10.0.0.5", 6380),) and plain.db == 2 and plain.password == "p/w" and plain.tls is None
    tls = RedisTarget.parse("rediss://user:pw@redis.example/0?ssl_ca_certs=/etc/ca.pem")
    assert tls.hosts == (("redis.example", 6379),) and tls.username == "user"
    assert tls.tls == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True, "ssl_ca_certs": "/etc/ca.pem"}
    assert RedisTarget.parse("rediss://h").tls == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True}


def test_a_sentinel_url_names_every_sentinel_and_the_master() -> None:
    target = RedisTarget.parse("redis+sentinel://:pw@s1,s2:26380,[::1]:5/3?master_name=main&sentinel_password=sp")
    assert target.hosts == (("s1", 26379), ("s2", 26380), ("::1", 5)) and target.db == 3
    assert target.master_name == "main" and target.password == "pw" and target.sentinel_password == "sp"
    assert "pw" not in repr(target) and "sp" not in repr(target)
    broker = target.kombu()
    assert broker.url == "sentinel://:pw@s1:26379/3" and broker.scheme == "sentinel" and broker.use_ssl is None
    assert broker.alternates.split(";")[1] == "sentinel://:pw@s2:26380/3"
    assert broker.transport_options["master_name"] == "main"
    assert broker.transport_options["sentinels"] == [["s1", 26379], ["s2", 26380], ["::1", 5]]
    assert broker.transport_options["sentinel_kwargs"]["password"] == "sp"


def test_tls_reaches_kombu_and_the_sentinels() -> None:
    broker = RedisTarget.parse("rediss+sentinel://:pw@s1/0?master_name=m&ssl_ca_certs=/ca.pem").kombu()
    assert broker.use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True, "ssl_ca_certs": "/ca.pem"}
    assert broker.transport_options["sentinel_kwargs"]["ssl"] is True
    assert RedisTarget.parse("rediss://:pw@h:1/0").kombu().url == "rediss://:pw@h:1/0"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://:secret@h/0?ssl_ca_certs=/ca.pem", "TLS options need rediss://"),
        ("redis+sentinel://:secret@h/0?ssl_ca_certs=/ca.pem", "TLS options need rediss+sentinel://"),
        ("redis+sentinel://:secret@h1,h2/0", "needs ?master_name="),
        ("redis://:secret@h1,h2/0", "only redis+sentinel:// takes a comma-separated list"),
        ("rediss://:secret@h/0?ssl_cert_reqs=optional", "ssl_cert_reqs is required (the default) or none"),
        ("http://:secret@h/0", "REDIS_URL must start with"),
        ("redis://:secret@h/x", "the path is the database number"),
        ("redis://:secret@h:port/0", "is not host[:port]"),
        ("redis://:secret@h/0?master_name=m", "unknown option(s) master_name"),
    ],
)
def test_a_bad_url_is_refused_by_name_without_its_password(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=r".*") as refused:
        RedisTarget.parse(url)
    assert message in str(refused.value) and "secret" not in str(refused.value)


def test_a_tls_failure_is_its_own_transient_cause() -> None:
    assert transient_cause(TLSError("TLS handshake with Redis at h:1 failed")) == "redis_tls"
