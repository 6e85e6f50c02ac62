//! The tolerant reader: what a proxy reads from its control plane.
//!
//! The wire types deny unknown fields (`#[serde(deny_unknown_fields)]`), so
//! every file an operator writes (a static snapshot, a folder-mode manifest,
//! a CRD object) is refused at its first typo, named with its line. A proxy
//! reading its control plane must not be that strict: a control plane one
//! release newer may send optional fields this proxy predates, and refusing
//! the whole update would leave the proxy serving stale endpoints until it
//! is upgraded (see "Version skew" in docs/control-plane.md).
//!
//! [`from_json_slice`] reads the same types with the same derived
//! deserializers, but first drops every key a struct does not declare,
//! recording its path ([`Ignored`]) so the caller can log and count it.
//! It works because a derived struct deserializer names its fields to the
//! deserializer (`deserialize_struct(name, FIELDS, ..)`): this reader hands
//! the struct only the keys it knows, so `deny_unknown_fields` never fires.
//! Nothing else is relaxed: an unknown enum value, a wrong type or a
//! missing required field is still an error, with its path. A field whose
//! absence would weaken security or routing is never left to this reader:
//! the update lists its feature in `requires` ([`crate::features`]).

use std::cell::RefCell;
use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};
use serde::forward_to_deserialize_any;
use serde_json::{Map, Value};

/// How many ignored paths one read keeps (the count goes on past it).
pub const MAX_REPORTED: usize = 16;

/// The fields a tolerant read left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ignored {
    /// The first [`MAX_REPORTED`] paths, in document order
    /// (`services[0].routes[1].mirror`).
    pub paths: Vec<String>,
    /// Every ignored field, reported or not.
    pub count: usize,
}

impl Ignored {
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn record(&mut self, path: String) {
        self.count += 1;
        if self.paths.len() < MAX_REPORTED {
            self.paths.push(path);
        }
    }
}

impl fmt::Display for Ignored {
    /// The paths, comma-separated, and how many more were left unnamed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.paths.join(", "))?;
        let more = self.count - self.paths.len();
        if more > 0 {
            write!(f, " and {more} more")?;
        }
        Ok(())
    }
}

/// Why a tolerant read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Not JSON at all (with its line and column).
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON that does not fit the type, at `path` (the document when empty).
    #[error("{}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
    Invalid { path: String, message: String },
}

/// Reads `bytes` as a `T`, leaving out (and reporting) every field a struct
/// of `T` does not declare.
///
/// A document with no unknown field reads as the strict reader reads it,
/// at its speed (it is tried first); only a document it refuses is read
/// again through a tree, which takes about four times as long.
///
/// `whole` names the structs (by their Rust names, as serde's derive gives
/// them) that must be understood whole: an unknown key in one of those
/// refuses the read, naming it, instead of being left out. Those are the
/// structs where a field dropped could make the proxy enforce less than
/// asked ([`crate::features::UNDERSTOOD_WHOLE`]).
pub fn from_json_slice<T: DeserializeOwned>(
    bytes: &[u8],
    whole: &'static [&'static str],
) -> Result<(T, Ignored), ReadError> {
    if let Ok(read) = serde_json::from_slice(bytes) {
        return Ok((read, Ignored::default()));
    }
    through_tree(bytes, whole)
}

/// The tolerant read proper: the document as a tree, then `T` from it,
/// keys its structs do not declare left out. A key given twice reads as
/// its last value (the tree keeps one), where the strict reader refuses it.
fn through_tree<T: DeserializeOwned>(
    bytes: &[u8],
    whole: &'static [&'static str],
) -> Result<(T, Ignored), ReadError> {
    let value: Value = serde_json::from_slice(bytes)?;
    let cx = Context {
        ignored: RefCell::new(Ignored::default()),
        whole,
    };
    let read = T::deserialize(Reader {
        value,
        path: &Path::Root,
        cx: &cx,
    })
    .map_err(|e| ReadError::Invalid {
        path: e.path.unwrap_or_default(),
        message: e.message,
    })?;
    Ok((read, cx.ignored.into_inner()))
}

/// Where a value is, rendered only when something needs naming.
enum Path<'p> {
    Root,
    Key(&'p Path<'p>, &'p str),
    Index(&'p Path<'p>, usize),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => Ok(()),
            Path::Key(Path::Root, key) => f.write_str(key),
            Path::Key(parent, key) => write!(f, "{parent}.{key}"),
            Path::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// The reader's error: the innermost path where it arose, and the message.
#[derive(Debug)]
struct Error {
    path: Option<String>,
    message: String,
}

impl Error {
    fn at(mut self, path: &Path<'_>) -> Self {
        if self.path.is_none() {
            self.path = Some(path.to_string());
        }
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error {
            path: None,
            message: msg.to_string(),
        }
    }
}

/// What one read shares: the fields it left out, and the structs it must
/// understand whole.
struct Context {
    ignored: RefCell<Ignored>,
    whole: &'static [&'static str],
}

/// One JSON value and where it is.
struct Reader<'p> {
    value: Value,
    path: &'p Path<'p>,
    cx: &'p Context,
}

impl<'de> de::Deserializer<'de> for Reader<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else {
                    visitor.visit_f64(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => visitor.visit_string(s),
            Value::Array(items) => {
                let len = items.len();
                let mut seq = Elements {
                    items: items.into_iter(),
                    at: 0,
                    path: self.path,
                    cx: self.cx,
                };
                let out = visitor.visit_seq(&mut seq)?;
                if seq.at != len {
                    return Err(de::Error::invalid_length(len, &"fewer elements"));
                }
                Ok(out)
            }
            Value::Object(map) => visitor.visit_map(Entries::new(map, None, self.path, self.cx)),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.value {
            Value::Object(map) => {
                let mut entries = Entries::new(map, Some(fields), self.path, self.cx);
                entries.whole = self.cx.whole.contains(&name).then_some(name);
                visitor.visit_map(entries)
            }
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.value {
            Value::String(s) => visitor.visit_enum(s.into_deserializer()),
            Value::Object(map) if map.len() == 1 => {
                let (variant, value) = map.into_iter().next().expect("one entry");
                visitor.visit_enum(Variant {
                    variant,
                    value,
                    path: self.path,
                    cx: self.cx,
                })
            }
            _ => Err(de::Error::custom(
                "expected a string or an object of one key",
            )),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier
    }
}

/// The elements of an array, each read at its index.
struct Elements<'p> {
    items: std::vec::IntoIter<Value>,
    at: usize,
    path: &'p Path<'p>,
    cx: &'p Context,
}

impl<'de> SeqAccess<'de> for Elements<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        let Some(value) = self.items.next() else {
            return Ok(None);
        };
        let path = Path::Index(self.path, self.at);
        self.at += 1;
        seed.deserialize(Reader {
            value,
            path: &path,
            cx: self.cx,
        })
        .map(Some)
        .map_err(|e| e.at(&path))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// The entries of an object; for a struct (`fields`), only the keys it
/// declares, the others recorded as ignored.
struct Entries<'p> {
    entries: serde_json::map::IntoIter,
    fields: Option<&'static [&'static str]>,
    /// The struct's name when it must be understood whole: an unknown key
    /// in it refuses the read.
    whole: Option<&'static str>,
    /// The key whose value comes next.
    key: String,
    value: Option<Value>,
    path: &'p Path<'p>,
    cx: &'p Context,
}

impl<'p> Entries<'p> {
    fn new(
        map: Map<String, Value>,
        fields: Option<&'static [&'static str]>,
        path: &'p Path<'p>,
        cx: &'p Context,
    ) -> Self {
        Entries {
            entries: map.into_iter(),
            fields,
            whole: None,
            key: String::new(),
            value: None,
            path,
            cx,
        }
    }
}

impl<'de> MapAccess<'de> for Entries<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        for (key, value) in self.entries.by_ref() {
            if let Some(fields) = self.fields {
                if !fields.contains(&key.as_str()) {
                    if let Some(name) = self.whole {
                        return Err(<Error as de::Error>::custom(format_args!(
                            "unknown field `{key}` of {name}, which this proxy must \
                             understand whole (dropping it could weaken a security or \
                             routing setting): upgrade the proxy"
                        ))
                        .at(&Path::Key(self.path, &key)));
                    }
                    self.cx
                        .ignored
                        .borrow_mut()
                        .record(Path::Key(self.path, &key).to_string());
                    continue;
                }
            }
            let read = seed
                .deserialize(Key(&key))
                .map_err(|e| e.at(&Path::Key(self.path, &key)))?;
            self.key = key;
            self.value = Some(value);
            return Ok(Some(read));
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let value = self
            .value
            .take()
            .ok_or_else(|| <Error as de::Error>::custom("a value asked for before its key"))?;
        let path = Path::Key(self.path, &self.key);
        seed.deserialize(Reader {
            value,
            path: &path,
            cx: self.cx,
        })
        .map_err(|e| e.at(&path))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// An object key: a string, or a number written as one (JSON keys are
/// strings; maps keyed by port numbers read them back).
struct Key<'k>(&'k str);

macro_rules! parse_key {
    ($($method:ident => $visit:ident: $t:ty),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                // Only the number's own spelling, as the strict reader
                // takes it: `+80` or `080` would make two keys one.
                match self.0.parse::<$t>() {
                    Ok(n) if n.to_string() == self.0 => visitor.$visit(n),
                    _ => Err(de::Error::invalid_value(
                        de::Unexpected::Str(self.0),
                        &visitor,
                    )),
                }
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for Key<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str(self.0)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_enum(de::value::StrDeserializer::new(self.0))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    parse_key! {
        deserialize_u8 => visit_u8: u8, deserialize_u16 => visit_u16: u16,
        deserialize_u32 => visit_u32: u32, deserialize_u64 => visit_u64: u64,
        deserialize_i8 => visit_i8: i8, deserialize_i16 => visit_i16: i16,
        deserialize_i32 => visit_i32: i32, deserialize_i64 => visit_i64: i64,
    }

    forward_to_deserialize_any! {
        bool i128 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

/// An enum written as `{"variant": content}`.
struct Variant<'p> {
    variant: String,
    value: Value,
    path: &'p Path<'p>,
    cx: &'p Context,
}

impl<'de, 'p> EnumAccess<'de> for Variant<'p> {
    type Error = Error;
    type Variant = Reader<'p>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Reader<'p>), Error> {
        let read = seed.deserialize(Key(&self.variant))?;
        Ok((
            read,
            Reader {
                value: self.value,
                path: self.path,
                cx: self.cx,
            },
        ))
    }
}

impl<'de> VariantAccess<'de> for Reader<'_> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        match self.value {
            Value::Null => Ok(()),
            _ => Err(de::Error::custom("a unit variant has no content")),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_seq(self, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_struct(self, "", fields, visitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;
    use crate::inbound::{Inbound, MtlsMode};
    use crate::stream::ConfigUpdate;

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        name: String,
        #[serde(default)]
        inner: Option<Inner>,
        #[serde(default)]
        list: Vec<Inner>,
        #[serde(default)]
        by_port: BTreeMap<u16, Inner>,
        #[serde(default)]
        shape: Option<Shape>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        n: u32,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    enum Shape {
        Round,
        Box { side: u32 },
    }

    #[test]
    fn unknown_fields_are_left_out_at_every_depth_and_named() {
        let json = br#"{"name":"a","future":1,
            "inner":{"n":1,"later":{"x":[1,2]}},
            "list":[{"n":2},{"n":3,"new":true}],
            "by_port":{"8080":{"n":4,"more":"x"}},
            "shape":{"Box":{"side":5,"depth":6}}}"#;
        let (read, ignored) = from_json_slice::<Outer>(json, &[]).unwrap();
        assert_eq!(
            read,
            Outer {
                name: "a".into(),
                inner: Some(Inner { n: 1 }),
                list: vec![Inner { n: 2 }, Inner { n: 3 }],
                by_port: BTreeMap::from([(8080, Inner { n: 4 })]),
                shape: Some(Shape::Box { side: 5 }),
            }
        );
        let mut paths = ignored.paths.clone();
        paths.sort();
        assert_eq!(
            paths,
            [
                "by_port.8080.more",
                "future",
                "inner.later",
                "list[1].new",
                "shape.depth"
            ]
        );
        assert_eq!(ignored.count, 5);
        // A struct named as understood whole refuses an unknown key in it,
        // naming the key and where it is, and nothing else changes.
        let e = from_json_slice::<Outer>(json, &["Inner"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "by_port.8080.more: unknown field `more` of Inner, which this proxy must \
             understand whole (dropping it could weaken a security or routing setting): upgrade the proxy"
        );
        let outside = br#"{"name":"a","future":1,"inner":{"n":1}}"#;
        assert_eq!(
            from_json_slice::<Outer>(outside, &["Inner"])
                .unwrap()
                .1
                .paths,
            ["future"]
        );
        // The strict reader of the same type refuses the same document.
        let strict = serde_json::from_slice::<Outer>(json).unwrap_err();
        assert!(
            strict.to_string().contains("unknown field `future`"),
            "{strict}"
        );
    }

    #[test]
    fn everything_else_is_still_an_error_with_its_path() {
        let wrong_type =
            from_json_slice::<Outer>(br#"{"name":"a","list":[{"n":1},{"n":"x"}]}"#, &[])
                .unwrap_err()
                .to_string();
        assert!(
            wrong_type.starts_with("list[1].n: invalid type: string"),
            "{wrong_type}"
        );
        let missing = from_json_slice::<Outer>(br#"{"inner":{"n":1}}"#, &[])
            .unwrap_err()
            .to_string();
        assert_eq!(missing, "missing field `name`");
        let variant = from_json_slice::<Outer>(br#"{"name":"a","shape":"Triangle"}"#, &[])
            .unwrap_err()
            .to_string();
        assert!(
            variant.starts_with("shape: unknown variant `Triangle`"),
            "{variant}"
        );
        let port = from_json_slice::<Outer>(br#"{"name":"a","by_port":{"web":{"n":1}}}"#, &[])
            .unwrap_err()
            .to_string();
        assert!(port.starts_with("by_port.web: invalid value"), "{port}");
        // A number spelt otherwise than its own way, which would make two
        // keys one, is refused as the strict reader refuses it (the
        // unknown `x` sends the document through the tolerant reader).
        for key in ["+80", "080", " 80"] {
            let json = format!(r#"{{"name":"a","x":1,"by_port":{{"{key}":{{"n":1}}}}}}"#);
            let e = from_json_slice::<Outer>(json.as_bytes(), &[])
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("by_port.{key}: invalid value")),
                "{e}"
            );
            assert!(serde_json::from_slice::<Outer>(json.as_bytes()).is_err());
        }
        assert!(matches!(
            from_json_slice::<Outer>(b"{\"name\":", &[]),
            Err(ReadError::Json(_))
        ));
    }

    #[test]
    fn reports_are_bounded_and_the_count_is_not() {
        let members: Vec<String> = (0..40).map(|i| format!("\"extra{i:02}\":{i}")).collect();
        let json = format!("{{\"name\":\"a\",{}}}", members.join(","));
        let (_, ignored) = from_json_slice::<Outer>(json.as_bytes(), &[]).unwrap();
        assert_eq!(ignored.count, 40);
        assert_eq!(ignored.paths.len(), MAX_REPORTED);
        assert!(ignored.to_string().ends_with(" and 24 more"), "{ignored}");
    }

    #[test]
    fn a_control_plane_update_reads_as_the_strict_reader_does() {
        let json = br#"{"version":"v1","proxy":{"workload":"web","namespace":"shop"},
            "inbound":{"mtls":{"mode":"STRICT","ports":{"8080":"PERMISSIVE"}}},
            "services":[{"name":"api","namespace":"shop","ports":[80],
              "endpoints":[{"address":"10.0.0.1:80","meshed":true}]}]}"#;
        let strict: ConfigUpdate = serde_json::from_slice(json).unwrap();
        // Through the tree (what a document with unknown fields takes) and
        // through the strict reader tried first: the same update.
        let (tolerant, ignored) =
            through_tree::<ConfigUpdate>(json, crate::features::UNDERSTOOD_WHOLE).unwrap();
        assert_eq!(tolerant, strict);
        assert!(ignored.is_empty());
        assert_eq!(
            from_json_slice::<ConfigUpdate>(json, &[]).unwrap(),
            (strict, ignored)
        );
        let expected: Inbound =
            serde_json::from_str(r#"{"mtls":{"mode":"STRICT","ports":{"8080":"PERMISSIVE"}}}"#)
                .unwrap();
        assert_eq!(tolerant.inbound, expected);
        assert_eq!(tolerant.inbound.mtls.mode, MtlsMode::Strict);
    }
}
