//! Whole object graphs, decoded into [`Value`]s for inspection and tests.

use super::base::{PyReader, ReadError, Result, TPFLAGS_LONG_SUBCLASS};
use crate::inspect::memory::ProcessMemory;

/// A decoded object graph, for inspection and tests.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An int beyond 64 bits.
    BigInt,
    Float(f64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Set(Vec<Value>),
    Deque(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// An instance with attributes: its type's `tp_name` and its attributes in storage order.
    Object {
        type_name: String,
        attrs: Vec<(String, Value)>,
    },
    /// Anything else, or beyond the depth limit: its type's `tp_name`.
    Other {
        type_name: String,
    },
}

impl<M: ProcessMemory> PyReader<'_, M> {
    /// Decodes an object graph down to `depth` levels of containers and instances.
    pub fn value(&self, obj: u64, depth: u32) -> Result<Value> {
        let t = &self.types;
        if self.is_none(obj) {
            return Ok(Value::None);
        }
        if let Ok(b) = self.bool(obj) {
            return Ok(Value::Bool(b));
        }
        let ty = self.class_of(obj)?;
        let many = |items: Vec<u64>| -> Result<Vec<Value>> {
            items
                .into_iter()
                .map(|i| self.value(i, depth - 1))
                .collect()
        };
        let flags = self.type_flags(ty)?;
        if ty == t.str {
            return Ok(Value::Str(self.str(obj)?));
        }
        if ty == t.int || flags & TPFLAGS_LONG_SUBCLASS != 0 {
            return match self.int(obj) {
                Ok(v) => Ok(Value::Int(v)),
                Err(ReadError::TooBig { .. }) => Ok(Value::BigInt),
                Err(e) => Err(e),
            };
        }
        if ty == t.float {
            return Ok(Value::Float(self.float(obj)?));
        }
        let type_name = self.type_name(ty)?;
        if depth == 0 {
            return Ok(Value::Other { type_name });
        }
        if ty == t.tuple {
            return Ok(Value::Tuple(many(self.tuple(obj)?)?));
        }
        if ty == t.list {
            return Ok(Value::List(many(self.list_items(obj)?)?));
        }
        if ty == t.set || ty == t.frozenset {
            return Ok(Value::Set(many(self.set_items(obj)?)?));
        }
        if ty == t.dict {
            return Ok(Value::Dict(
                self.dict_items(obj)?
                    .into_iter()
                    .map(|(k, v)| Ok((self.value(k, depth - 1)?, self.value(v, depth - 1)?)))
                    .collect::<Result<_>>()?,
            ));
        }
        if self.expect_deque(obj).is_ok() {
            return Ok(Value::Deque(many(self.deque_items(obj)?)?));
        }
        let mut attrs = Vec::new();
        let stored = self
            .slots(obj)?
            .into_iter()
            .chain(self.instance_attrs(obj)?);
        for (name, value) in stored {
            attrs.push((name, self.value(value, depth - 1)?));
        }
        if attrs.is_empty() {
            return Ok(Value::Other { type_name });
        }
        Ok(Value::Object { type_name, attrs })
    }
}
