//! The SQL catalog on SQLite: the tables Iceberg's JDBC catalog defines
//! (`iceberg_tables`, `iceberg_namespace_properties`), which PyIceberg's
//! `SqlCatalog`, Spark and Trino read too. A commit is a compare-and-swap
//! of a table's metadata location: it succeeds only while the row still
//! names the metadata the commit was built on.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use sluice_engine::{Error, Result};

fn sql(what: &str, e: rusqlite::Error) -> Error {
    Error::connector("iceberg", format!("SQL catalog, {what}: {e}"))
}

/// One catalog (a name inside one SQLite database).
#[derive(Debug)]
pub struct SqlCatalog {
    conn: Connection,
    name: String,
}

impl SqlCatalog {
    /// Opens (creating if needed) the catalog `name` in the SQLite file
    /// at `path`.
    pub fn open(path: &Path, name: &str) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let conn =
            Connection::open(path).map_err(|e| sql(&format!("opening {}", path.display()), e))?;
        // Several subtasks and processes share the file: wait for a lock
        // rather than fail at once.
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(|e| sql("setting the busy timeout", e))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS iceberg_tables (
                catalog_name VARCHAR(255) NOT NULL,
                table_namespace VARCHAR(255) NOT NULL,
                table_name VARCHAR(255) NOT NULL,
                metadata_location VARCHAR(1000),
                previous_metadata_location VARCHAR(1000),
                PRIMARY KEY (catalog_name, table_namespace, table_name));
             CREATE TABLE IF NOT EXISTS iceberg_namespace_properties (
                catalog_name VARCHAR(255) NOT NULL,
                namespace VARCHAR(255) NOT NULL,
                property_key VARCHAR(255) NOT NULL,
                property_value VARCHAR(1000) NOT NULL,
                PRIMARY KEY (catalog_name, namespace, property_key));",
        )
        .map_err(|e| {
            sql(
                &format!("creating the catalog tables in {}", path.display()),
                e,
            )
        })?;
        Ok(SqlCatalog {
            conn,
            name: name.to_string(),
        })
    }

    /// Creates namespace `ns` unless it exists.
    pub fn ensure_namespace(&self, ns: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO iceberg_namespace_properties
                 (catalog_name, namespace, property_key, property_value)
                 VALUES (?1, ?2, 'exists', 'true')",
                params![self.name, ns],
            )
            .map_err(|e| sql(&format!("creating namespace {ns}"), e))?;
        Ok(())
    }

    /// The metadata location of table `ns.table`, if it exists.
    pub fn location(&self, ns: &str, table: &str) -> Result<Option<String>> {
        self.conn
            .query_row(
                "SELECT metadata_location FROM iceberg_tables
                 WHERE catalog_name = ?1 AND table_namespace = ?2 AND table_name = ?3",
                params![self.name, ns, table],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(|e| sql(&format!("loading {ns}.{table}"), e))
    }

    /// Registers a new table; false when another writer created it first.
    pub fn create(&self, ns: &str, table: &str, metadata: &str) -> Result<bool> {
        let n = self
            .conn
            .execute(
                "INSERT OR IGNORE INTO iceberg_tables
                 (catalog_name, table_namespace, table_name, metadata_location,
                  previous_metadata_location)
                 VALUES (?1, ?2, ?3, ?4, NULL)",
                params![self.name, ns, table, metadata],
            )
            .map_err(|e| sql(&format!("creating {ns}.{table}"), e))?;
        Ok(n == 1)
    }

    /// Points `ns.table` at `new` if it still points at `old`; false when
    /// another commit came first.
    pub fn swap(&self, ns: &str, table: &str, old: &str, new: &str) -> Result<bool> {
        let n = self
            .conn
            .execute(
                "UPDATE iceberg_tables SET metadata_location = ?1, previous_metadata_location = ?2
                 WHERE catalog_name = ?3 AND table_namespace = ?4 AND table_name = ?5
                   AND metadata_location = ?2",
                params![new, old, self.name, ns, table],
            )
            .map_err(|e| sql(&format!("committing to {ns}.{table}"), e))?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_are_compare_and_swap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/catalog.db");
        let a = SqlCatalog::open(&path, "sluice").unwrap();
        let b = SqlCatalog::open(&path, "sluice").unwrap();
        a.ensure_namespace("lake").unwrap();
        a.ensure_namespace("lake").unwrap();
        assert_eq!(a.location("lake", "t").unwrap(), None);
        assert!(a.create("lake", "t", "m0").unwrap());
        assert!(!b.create("lake", "t", "other").unwrap());
        assert!(a.swap("lake", "t", "m0", "m1").unwrap());
        // b built on m0 too: its swap loses.
        assert!(!b.swap("lake", "t", "m0", "m2").unwrap());
        assert_eq!(b.location("lake", "t").unwrap().as_deref(), Some("m1"));
        // Another catalog name in the same file is another catalog.
        let c = SqlCatalog::open(&path, "other").unwrap();
        assert_eq!(c.location("lake", "t").unwrap(), None);
    }
}
