"""Reads an Iceberg table with PyIceberg, the independent reader of the
Iceberg tests: the SQL catalog in an SQLite file, by the catalog's name;
a table in S3 is read with the endpoint and keys of the AWS_* variables.
Prints every row as one JSON object with sorted keys on stdout, and on
stderr one JSON object describing the table: its schema's columns, the
partition spec, and each snapshot's summary."""

import json
import os
import sys

from pyiceberg.catalog.sql import SqlCatalog


def main(db, catalog, table):
    props = {}
    if "AWS_ENDPOINT" in os.environ:
        props = {
            "s3.endpoint": os.environ["AWS_ENDPOINT"],
            "s3.access-key-id": os.environ["AWS_ACCESS_KEY_ID"],
            "s3.secret-access-key": os.environ["AWS_SECRET_ACCESS_KEY"],
            "s3.region": os.environ.get("AWS_REGION", "us-east-1"),
        }
    cat = SqlCatalog(catalog, uri=f"sqlite:///{db}", **props)
    t = cat.load_table(table)
    for row in t.scan().to_arrow().to_pylist():
        print(json.dumps(row, sort_keys=True, default=str))
    info = {
        "columns": [[f.field_id, f.name, str(f.field_type)] for f in t.schema().fields],
        "spec": [[f.name, str(f.transform)] for f in t.spec().fields],
        "snapshots": [
            {"id": s.snapshot_id, "parent": s.parent_snapshot_id,
             "summary": s.summary.additional_properties | {"operation": str(s.summary.operation)}}
            for s in t.snapshots()
        ],
        "files": len(t.inspect.files()),
    }
    print(json.dumps(info), file=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:4])
