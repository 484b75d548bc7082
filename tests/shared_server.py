"""The session's shared gateway server (tests/conftest.py's ``gateway_server`` fixture): the
API key its /v1 routes need, for the system tests that call it."""

API_KEY = "test-key"
