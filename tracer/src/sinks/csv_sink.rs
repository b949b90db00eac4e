//! One streaming CSV file per row type. The header is written when the file is created, so
//! a trace that saw no rows still leaves a file a notebook can load.

use std::{fs::File, io, marker::PhantomData, path::Path};

use serde::Serialize;

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

pub struct CsvSink<R> {
    writer: csv::Writer<File>,
    rows: u64,
    row: PhantomData<R>,
}

impl<R: Row> CsvSink<R> {
    pub fn create(path: &Path) -> csv::Result<Self> {
        let mut writer = csv::WriterBuilder::new()
            .has_headers(false)
            .from_path(path)?;
        writer.write_record(header::<R>())?;
        Ok(Self {
            writer,
            rows: 0,
            row: PhantomData,
        })
    }

    pub fn write(&mut self, row: &R) -> csv::Result<()> {
        self.rows += 1;
        self.writer.serialize(row)
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}
