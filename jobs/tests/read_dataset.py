"""Reads a Parquet dataset with PyArrow, the independent reader of the lake
tests: a directory or s3://bucket/prefix (endpoint and keys from AWS_*),
Hive partitioning (partition values become columns; names starting with
'.' or '_' are skipped, as every Hive-aware reader does). Prints every row
as one JSON object with sorted keys, and `files=N` on stderr."""

import json
import os
import sys

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as fs


def main(location):
    if location.startswith("s3://"):
        endpoint = os.environ["AWS_ENDPOINT"]
        filesystem = fs.S3FileSystem(
            endpoint_override=endpoint.split("://", 1)[1],
            scheme=endpoint.split("://", 1)[0],
            access_key=os.environ["AWS_ACCESS_KEY_ID"],
            secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
            region=os.environ.get("AWS_REGION", "us-east-1"),
        )
        path = location[len("s3://"):].rstrip("/")
    else:
        filesystem = fs.LocalFileSystem()
        path = os.path.abspath(location)
    if filesystem.get_file_info(path).type == fs.FileType.NotFound:
        print("files=0", file=sys.stderr)
        return
    dataset = ds.dataset(path, filesystem=filesystem, format="parquet", partitioning="hive")
    # Files may differ in schema (an evolved one has more columns, wider
    # types): read all of them with the unified schema.
    physical = [f.physical_schema for f in dataset.get_fragments()]
    if physical:
        unified = pa.unify_schemas(physical, promote_options="permissive")
        for field in dataset.schema:
            if unified.get_field_index(field.name) < 0:
                unified = unified.append(field)
        dataset = ds.dataset(
            path, filesystem=filesystem, format="parquet", partitioning="hive", schema=unified
        )
    out = sys.stdout
    for batch in dataset.to_batches():
        for row in batch.to_pylist():
            out.write(json.dumps(row, sort_keys=True, default=str))
            out.write("\n")
    print(f"files={len(dataset.files)}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1])
