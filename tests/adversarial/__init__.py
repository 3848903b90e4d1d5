"""The adversarial corpus of issue 13 (cases.yaml, files/) and the test that runs it."""
