from cdp_pipeline_tests.fixtures.postgresql_server import postgresql_server  # noqa: F401  (a fixture used by these tests)
