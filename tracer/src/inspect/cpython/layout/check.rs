//! Checking a row against the interpreter's own `_Py_DebugOffsets` (3.13+), whose numbers
//! win where they differ: they describe the build actually running.

use super::types::{Bytecode, Layout, LongSize, ThreadId};

/// The first 8 bytes of `_PyRuntime` from 3.13 (`_Py_Debug_Cookie`).
pub const DEBUG_COOKIE: &[u8; 8] = b"xdebugpy";

/// The result of checking a row against the interpreter's own `_Py_DebugOffsets`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayoutCheck {
    /// The interpreter states no offsets (before 3.13).
    Unavailable,
    /// All `fields` offsets it states agree with the row.
    Agrees { fields: usize },
    /// These differed (`field: row → interpreter`); the interpreter's values are used.
    Overridden { mismatches: Vec<String> },
}

impl Layout {
    /// The value of the field a `_Py_DebugOffsets` entry names.
    fn debug_field(&self, name: &str) -> Option<u64> {
        Some(match name {
            "runtime_interpreters_head" => self.runtime_interpreters_head,
            "interp_threads_head" => self.interp_threads_head,
            "interp_modules" => self.interp_modules,
            "tstate_next" => self.tstate_next,
            "tstate_thread_id" => match self.tstate_thread_id {
                ThreadId::Native(offset) => offset,
                ThreadId::Pthread(_) => return None,
            },
            "tstate_current_frame" => match self.tstate_current_frame {
                [offset] => *offset,
                _ => return None,
            },
            "frame_code" => self.frame_code,
            "frame_previous" => self.frame_previous,
            "frame_localsplus" => self.frame_localsplus,
            "code_name" => self.code_name,
            "code_qualname" => self.code_qualname?,
            "code_linetable" => self.code_linetable,
            "code_firstlineno" => self.code_firstlineno,
            "code_localsplusnames" => self.code_localsplusnames,
            "code_bytecode" => match self.code_bytecode {
                Bytecode::Adaptive(offset) => offset,
                Bytecode::Bytes(_) => return None,
            },
            "object_type" => self.object_type,
            "type_name" => self.type_name,
            "type_flags" => self.type_flags,
            "tuple_items" => self.tuple_items,
            "var_size" => self.var_size,
            "list_items" => self.list_items,
            "dict_keys" => self.dict_keys,
            "dict_values" => self.dict_values,
            "float_value" => self.float_value,
            "long_size" => match self.long_size {
                LongSize::Tag { offset, .. } => offset,
                LongSize::ObSize => return None,
            },
            "long_digits" => self.long_digits,
            "bytes_data" => self.bytes_data,
            "unicode_state" => self.unicode_state,
            "unicode_length" => self.unicode_length,
            "unicode_ascii_data" => self.unicode_ascii_data,
            "set_used" => self.set_used,
            "set_table" => self.set_table,
            "set_mask" => self.set_mask,
            _ => return None,
        })
    }

    /// Sets the field a `_Py_DebugOffsets` entry names (one [`Self::debug_field`] reads).
    fn set_debug_field(&mut self, name: &str, value: u64) {
        let field = match name {
            "runtime_interpreters_head" => &mut self.runtime_interpreters_head,
            "interp_threads_head" => &mut self.interp_threads_head,
            "interp_modules" => &mut self.interp_modules,
            "tstate_next" => &mut self.tstate_next,
            "tstate_thread_id" => {
                self.tstate_thread_id = ThreadId::Native(value);
                return;
            }
            "tstate_current_frame" => {
                self.tstate_current_frame = Box::leak(Box::new([value]));
                return;
            }
            "frame_code" => &mut self.frame_code,
            "frame_previous" => &mut self.frame_previous,
            "frame_localsplus" => &mut self.frame_localsplus,
            "code_name" => &mut self.code_name,
            "code_qualname" => {
                self.code_qualname = Some(value);
                return;
            }
            "code_linetable" => &mut self.code_linetable,
            "code_firstlineno" => &mut self.code_firstlineno,
            "code_localsplusnames" => &mut self.code_localsplusnames,
            "code_bytecode" => {
                self.code_bytecode = Bytecode::Adaptive(value);
                return;
            }
            "object_type" => &mut self.object_type,
            "type_name" => &mut self.type_name,
            "type_flags" => &mut self.type_flags,
            "tuple_items" => &mut self.tuple_items,
            "var_size" => &mut self.var_size,
            "list_items" => &mut self.list_items,
            "dict_keys" => &mut self.dict_keys,
            "dict_values" => &mut self.dict_values,
            "float_value" => &mut self.float_value,
            "long_size" => {
                if let LongSize::Tag { offset, .. } = &mut self.long_size {
                    *offset = value;
                }
                return;
            }
            "long_digits" => &mut self.long_digits,
            "bytes_data" => &mut self.bytes_data,
            "unicode_state" => &mut self.unicode_state,
            "unicode_length" => &mut self.unicode_length,
            "unicode_ascii_data" => &mut self.unicode_ascii_data,
            "set_used" => &mut self.set_used,
            "set_table" => &mut self.set_table,
            "set_mask" => &mut self.set_mask,
            _ => return,
        };
        *field = value;
    }

    /// Checks this row against the interpreter's `_Py_DebugOffsets`, each entry read by
    /// `read(offset in _Py_DebugOffsets)`, and returns the layout to use: the row itself
    /// when they agree, else a copy (leaked: one per traced process) with the
    /// interpreter's numbers, which describe the build actually running.
    pub fn checked<E>(
        &'static self,
        mut read: impl FnMut(u64) -> Result<u64, E>,
    ) -> Result<(&'static Layout, LayoutCheck), E> {
        let Some(debug) = self.debug_offsets else {
            return Ok((self, LayoutCheck::Unavailable));
        };
        let mut patched = self.clone();
        let mut mismatches = Vec::new();
        for &(name, offset) in debug.fields {
            let stated = read(offset)?;
            if let Some(ours) = self.debug_field(name).filter(|&ours| ours != stated) {
                mismatches.push(format!("{name}: {ours} → {stated}"));
                patched.set_debug_field(name, stated);
            }
        }
        if mismatches.is_empty() {
            return Ok((
                self,
                LayoutCheck::Agrees {
                    fields: debug.fields.len(),
                },
            ));
        }
        Ok((
            Box::leak(Box::new(patched)),
            LayoutCheck::Overridden { mismatches },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::{super::tables::LAYOUTS, *};

    #[test]
    fn every_debug_offset_names_a_field() {
        for row in LAYOUTS {
            for &(name, _) in row.debug_offsets.map_or(&[][..], |d| d.fields) {
                assert!(row.debug_field(name).is_some(), "{:?}: {name}", row.version);
            }
        }
    }

    #[test]
    fn debug_offsets_override_the_row_where_they_differ() {
        let row = LAYOUTS
            .iter()
            .find(|l| l.debug_offsets.is_some())
            .expect("a row with _Py_DebugOffsets");
        let fields = row.debug_offsets.unwrap().fields;
        let value_at = |offset: u64| {
            let (name, _) = fields.iter().find(|(_, o)| *o == offset).unwrap();
            row.debug_field(name).unwrap()
        };
        let (same, check) = row.checked(|o| Ok::<_, ()>(value_at(o))).unwrap();
        assert!(std::ptr::eq(same, row));
        assert_eq!(
            check,
            LayoutCheck::Agrees {
                fields: fields.len()
            }
        );
        let frame_at = fields
            .iter()
            .find(|(n, _)| *n == "tstate_current_frame")
            .unwrap()
            .1;
        let (patched, check) = row
            .checked(|o| Ok::<_, ()>(if o == frame_at { 4242 } else { value_at(o) }))
            .unwrap();
        assert_eq!(patched.tstate_current_frame, &[4242]);
        assert_eq!(patched.frame_code, row.frame_code);
        assert!(
            matches!(&check, LayoutCheck::Overridden { mismatches } if mismatches.len() == 1),
            "{check:?}"
        );
    }
}
