#!/usr/bin/env bash
# Installs the servers the tests talk to into .tools/ (a Python virtual
# environment; idempotent): moto, an S3-compatible server for checkpoint
# storage and Parquet output in a bucket; PyArrow, the independent reader
# the lake tests read partitioned Parquet back with; PyIceberg (with its
# SQL catalog), which reads the Iceberg tests' tables.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.tools/venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if [ ! -x "$venv/bin/moto_server" ]; then
  echo "tools: installing moto (S3 test server)"
  "$venv/bin/pip" install -q --disable-pip-version-check 'moto[server]==5.2.5'
fi
if ! "$venv/bin/python" -c 'import pyarrow' >/dev/null 2>&1; then
  echo "tools: installing pyarrow (independent Parquet reader)"
  "$venv/bin/pip" install -q --disable-pip-version-check 'pyarrow==26.0.1'
fi
if ! "$venv/bin/python" -c 'import pyiceberg.catalog.sql, sqlalchemy' >/dev/null 2>&1; then
  echo "tools: installing pyiceberg (independent Iceberg reader)"
  "$venv/bin/pip" install -q --disable-pip-version-check 'pyiceberg[sql-sqlite]==0.10.0'
fi
# The REST API is fuzzed from its generated OpenAPI document by schemathesis
# (its own environment: its pins do not meet moto's).
st=.tools/schemathesis
[ -x "$st/bin/python" ] || python3 -m venv "$st"
if [ ! -x "$st/bin/schemathesis" ]; then
  echo "tools: installing schemathesis (REST API fuzzing)"
  "$st/bin/pip" install -q --disable-pip-version-check 'schemathesis==4.32.5'
fi
