//! [`text_enum!`]: a closed set of words stored in a `text` column under a `CHECK (… IN …)`
//! and sent as a JSON string — a run's status, a step's, a user's role — as a Rust enum, so
//! that a typo in Rust fails to compile instead of matching nothing.
//!
//! Each variant is spelled once, and that one spelling is what PostgreSQL stores (through
//! `sqlx::Type` on `text`), what serde writes and reads, what `as_str` and `Display` give
//! and what `FromStr` takes. `ALL` lists the variants in the order written, and the
//! integration test `every_status_word_round_trips_through_its_column` writes each one into
//! its column, so a variant the column's `CHECK` does not accept fails a test.

/// Declares a text enum: `pub enum Name("what it is") { Variant = "word", … }`. The
/// `"what it is"` names the set in `FromStr`'s error (`unknown run status "x"; expected one
/// of …`).
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash,
            ::serde::Serialize, ::serde::Deserialize, ::sqlx::Type,
        )]
        #[sqlx(type_name = "text")]
        $vis enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] #[sqlx(rename = $text)] $variant, )+
        }

        impl $name {
            /// Every variant, in the order declared.
            pub const ALL: [$name; [$($text),+].len()] = [$($name::$variant),+];

            /// Every variant's word, in the order of [`Self::ALL`].
            pub const NAMES: [&'static str; [$($text),+].len()] = [$($text),+];

            /// The word PostgreSQL stores and the JSON carries.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }
        }

        // By hand, not derived: the derive does not see a `serde(rename)` whose word comes
        // through this macro, and would document the Rust names ("Succeeded") instead of the
        // words the API sends ("succeeded").
        impl ::utoipa::PartialSchema for $name {
            fn schema() -> ::utoipa::openapi::RefOr<::utoipa::openapi::schema::Schema> {
                ::utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(::utoipa::openapi::schema::Type::String)
                    .enum_values(Some($name::NAMES))
                    .into()
            }
        }

        impl ::utoipa::ToSchema for $name {}

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $text => Ok($name::$variant), )+
                    _ => Err(format!(
                        "unknown {} {s:?}; expected one of {}",
                        $what,
                        $name::NAMES.join(", ")
                    )),
                }
            }
        }
    };
}
pub(crate) use text_enum;
