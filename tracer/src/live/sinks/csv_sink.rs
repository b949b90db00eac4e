//! One streaming CSV file per row type. The header is written when the file is created, so
//! a trace that saw no rows still leaves a file a notebook can load.

use std::{
    fs::File,
    io::{self, Write},
    marker::PhantomData,
};

use anyhow::Context as _;
use serde::Serialize;

use super::OutDir;

/// A row type of one of the CSV outputs. `Default` gives the header: the column names are
/// the field names, taken from serde, so they cannot drift from the rows.
pub trait Row: Serialize + Default {}

impl<T: Serialize + Default> Row for T {}

/// The header line of `R`'s CSV file.
pub fn header<R: Row>() -> Vec<String> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer
        .serialize(R::default())
        .expect("serializing a default row into memory cannot fail");
    let bytes = writer
        .into_inner()
        .expect("flushing into memory cannot fail");
    let text = String::from_utf8(bytes).expect("csv writes utf-8");
    let line = text.lines().next().unwrap_or_default();
    csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(line.as_bytes())
        .records()
        .next()
        .and_then(Result::ok)
        .map(|record| record.iter().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Rows are kept in memory and written to the file only as whole rows: if the disk fills
/// mid-write, the partial tail is cut off again, so the file stays loadable.
pub struct CsvSink<R> {
    writer: csv::Writer<Vec<u8>>,
    file: File,
    /// Bytes of whole rows in the file.
    committed: u64,
    rows: u64,
    row: PhantomData<R>,
}

fn buffer() -> csv::Writer<Vec<u8>> {
    csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new())
}

/// Buffered rows are written once they exceed this (and on every `flush`).
const BUFFER_BYTES: usize = 1 << 20;

impl<R: Row> CsvSink<R> {
    /// Creates `name` in `dir` (see [`OutDir::create_file`]) and writes the header.
    pub fn create(dir: &OutDir, name: &str) -> anyhow::Result<Self> {
        let mut writer = buffer();
        writer.write_record(header::<R>())?;
        let mut sink = Self {
            writer,
            file: dir.create_file(name)?,
            committed: 0,
            rows: 0,
            row: PhantomData,
        };
        sink.flush()
            .with_context(|| format!("writing {}", dir.join(name).display()))?;
        Ok(sink)
    }

    pub fn write(&mut self, row: &R) -> csv::Result<()> {
        self.rows += 1;
        self.writer.serialize(row)?;
        if self.writer.get_ref().len() > BUFFER_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn flush(&mut self) -> io::Result<()> {
        let bytes = std::mem::replace(&mut self.writer, buffer())
            .into_inner()
            .map_err(|e| e.into_error())?;
        if let Err(e) = self.file.write_all(&bytes) {
            // Best effort: the error that matters is `e`.
            let _ = self.file.set_len(self.committed);
            return Err(e);
        }
        self.committed += bytes.len() as u64;
        Ok(())
    }
}
