"""Session-wide fixtures: the real servers and keys the tests use (sshd, moto S3, FTP/FTPS, gpg, SMTP).

Each fixture module starts its server on 127.0.0.1 on a free port and stops it at the end of
the session; nothing reaches the network beyond loopback.
"""

pytest_plugins = [
    "cdp_pipeline_tests.fixtures.sshd",
    "cdp_pipeline_tests.fixtures.moto_s3",
    "cdp_pipeline_tests.fixtures.gpg_keys",
    "cdp_pipeline_tests.fixtures.smtp",
    "cdp_pipeline_tests.fixtures.small_disk",
    "cdp_pipeline_tests.fixtures.ftpd",
    "cdp_pipeline_tests.fixtures.postgres_server",
    "cdp_pipeline_tests.fixtures.store_backends",
]
