//! Typed metadata lookups: absent keys are `Ok(None)`, present keys of the wrong type are errors naming the key.

use std::borrow::Cow;

use crate::{Array, GgufError, GgufFile, Value};

impl GgufFile {
    /// An integer value under `key` converted to `T`; any integer type is accepted if the value fits.
    fn get_integer<T: TryFrom<i128>>(
        &self,
        key: &str,
        target: &'static str,
    ) -> Result<Option<T>, GgufError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let wide = value
            .as_integer()
            .ok_or_else(|| wrong_type(key, target, value))?;
        T::try_from(wide)
            .map(Some)
            .map_err(|_| GgufError::OutOfRange {
                key: key.to_string(),
                value: wide.to_string(),
                target,
            })
    }

    /// `key` as a u32 (from any integer type that fits).
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>, GgufError> {
        self.get_integer(key, "u32")
    }

    /// `key` as a u64 (from any non-negative integer).
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.get_integer(key, "u64")
    }

    /// `key` as an i32 (from any integer type that fits).
    pub fn get_i32(&self, key: &str) -> Result<Option<i32>, GgufError> {
        self.get_integer(key, "i32")
    }

    /// `key` as an i64 (from any integer type that fits).
    pub fn get_i64(&self, key: &str) -> Result<Option<i64>, GgufError> {
        self.get_integer(key, "i64")
    }

    /// `key` as an f32; f64 values are rounded and integers converted.
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>, GgufError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        match value {
            Value::F32(v) => Ok(Some(*v)),
            Value::F64(v) => Ok(Some(*v as f32)),
            other => match other.as_integer() {
                Some(i) => Ok(Some(i as f32)),
                None => Err(wrong_type(key, "f32", value)),
            },
        }
    }

    /// `key` as a bool (only bool values are accepted).
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(wrong_type(key, "bool", other)),
        }
    }

    /// `key` as a string.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(wrong_type(key, "string", other)),
        }
    }

    /// `key` as an array of any element type.
    pub fn get_array(&self, key: &str) -> Result<Option<&Array>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(other) => Err(wrong_type(key, "array", other)),
        }
    }

    /// `key` as an array of strings, borrowed (e.g. `tokenizer.ggml.tokens`; call `.to_vec()` to own it).
    pub fn get_str_array(&self, key: &str) -> Result<Option<&[String]>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(Array::String(v))) => Ok(Some(v)),
            Some(other) => Err(wrong_type(key, "array of string", other)),
        }
    }

    /// `key` as an array of f32, borrowed (e.g. `tokenizer.ggml.scores`).
    pub fn get_f32_array(&self, key: &str) -> Result<Option<&[f32]>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(Array::F32(v))) => Ok(Some(v)),
            Some(other) => Err(wrong_type(key, "array of f32", other)),
        }
    }

    /// `key` as an array of i32 (e.g. `tokenizer.ggml.token_type`): borrowed when stored as i32, otherwise
    /// converted from any integer element type whose values all fit.
    pub fn get_i32_array(&self, key: &str) -> Result<Option<Cow<'_, [i32]>>, GgufError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let array = match value {
            Value::Array(Array::I32(v)) => return Ok(Some(Cow::Borrowed(v))),
            Value::Array(array) if array.element_type().is_integer() => array,
            other => return Err(wrong_type(key, "array of i32", other)),
        };
        let mut out = Vec::with_capacity(array.len());
        for index in 0..array.len() {
            // Every index below len() of an integer array yields a value.
            let wide = array.integer_at(index).unwrap_or_default();
            let narrow = i32::try_from(wide).map_err(|_| GgufError::OutOfRange {
                key: format!("{key}[{index}]"),
                value: wide.to_string(),
                target: "i32",
            })?;
            out.push(narrow);
        }
        Ok(Some(Cow::Owned(out)))
    }
}

/// The error for `key` holding `found` where `expected` was asked for.
fn wrong_type(key: &str, expected: &'static str, found: &Value) -> GgufError {
    GgufError::WrongType {
        key: key.to_string(),
        expected,
        found: found.type_description(),
    }
}
