//! Storage classes and restore tiers.
//!
//! The index records a class as S3 names it, except that an Intelligent-Tiering object that S3
//! reports in one of its archive access tiers (`x-amz-archive-status`) is recorded as
//! `INTELLIGENT_TIERING/<status>`: that object needs a restore like GLACIER does, where one in a
//! frequent or infrequent tier reads at once. [`StorageClass::needs_restore`] is the one place
//! that says which classes need a restore; folder read-ahead, `open` and `coldvault restore`
//! all ask it.

use std::fmt;

/// An Intelligent-Tiering archive access tier (`x-amz-archive-status`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ItArchive {
    ArchiveAccess,
    DeepArchiveAccess,
    /// A status this build does not know: still archived, kept as sent.
    Other(String),
}

impl ItArchive {
    pub fn parse(s: &str) -> ItArchive {
        match s {
            "ARCHIVE_ACCESS" => ItArchive::ArchiveAccess,
            "DEEP_ARCHIVE_ACCESS" => ItArchive::DeepArchiveAccess,
            o => ItArchive::Other(o.to_string()),
        }
    }
    pub fn as_str(&self) -> &str {
        match self {
            ItArchive::ArchiveAccess => "ARCHIVE_ACCESS",
            ItArchive::DeepArchiveAccess => "DEEP_ARCHIVE_ACCESS",
            ItArchive::Other(s) => s,
        }
    }
}

/// Where an object's bytes sit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum StorageClass {
    #[default]
    Standard,
    StandardIa,
    OnezoneIa,
    /// Intelligent-Tiering; `Some` while S3 reports the object in an archive access tier.
    IntelligentTiering(Option<ItArchive>),
    GlacierIr,
    Glacier,
    DeepArchive,
    /// A class this build does not know (a newer S3 class, another server's): kept as sent,
    /// read as if no restore were needed (a GET that fails says otherwise).
    Other(String),
}

/// A class name that cannot be chosen for uploads.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown storage class {0:?}; one of {list}", list = StorageClass::CHOOSABLE.join(", "))]
pub struct UnknownClass(pub String);

impl StorageClass {
    /// The classes a path rule, a config or `init` may choose for new objects.
    pub const CHOOSABLE: &'static [&'static str] =
        &["STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE"];

    /// The class as the index records it (never fails: an unknown name is `Other`).
    pub fn parse(s: &str) -> StorageClass {
        match s {
            "STANDARD" | "" => StorageClass::Standard,
            "STANDARD_IA" => StorageClass::StandardIa,
            "ONEZONE_IA" => StorageClass::OnezoneIa,
            "INTELLIGENT_TIERING" => StorageClass::IntelligentTiering(None),
            "GLACIER_IR" => StorageClass::GlacierIr,
            "GLACIER" => StorageClass::Glacier,
            "DEEP_ARCHIVE" => StorageClass::DeepArchive,
            o => match o.strip_prefix("INTELLIGENT_TIERING/") {
                Some(a) => StorageClass::IntelligentTiering(Some(ItArchive::parse(a))),
                None => StorageClass::Other(o.to_string()),
            },
        }
    }

    /// A class a user chose (config, path rule, `init`): one of [`Self::CHOOSABLE`].
    pub fn choose(s: &str) -> Result<StorageClass, UnknownClass> {
        if Self::CHOOSABLE.contains(&s) {
            Ok(Self::parse(s))
        } else {
            Err(UnknownClass(s.to_string()))
        }
    }

    /// The class of a HeadObject answer: S3's class plus the Intelligent-Tiering archive status.
    pub fn from_head(class: &str, archive_status: Option<&str>) -> StorageClass {
        match (Self::parse(class), archive_status) {
            (StorageClass::IntelligentTiering(_), Some(a)) => StorageClass::IntelligentTiering(Some(ItArchive::parse(a))),
            (c, _) => c,
        }
    }

    /// The text the index, the journal and the status files carry.
    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        match self {
            StorageClass::IntelligentTiering(Some(a)) => format!("INTELLIGENT_TIERING/{}", a.as_str()).into(),
            c => c.wire().into(),
        }
    }

    /// The class as S3 names it in a request (`x-amz-storage-class`).
    pub fn wire(&self) -> &str {
        match self {
            StorageClass::Standard => "STANDARD",
            StorageClass::StandardIa => "STANDARD_IA",
            StorageClass::OnezoneIa => "ONEZONE_IA",
            StorageClass::IntelligentTiering(_) => "INTELLIGENT_TIERING",
            StorageClass::GlacierIr => "GLACIER_IR",
            StorageClass::Glacier => "GLACIER",
            StorageClass::DeepArchive => "DEEP_ARCHIVE",
            StorageClass::Other(s) => s,
        }
    }

    /// Reading the object needs a restore first (a GET answers InvalidObjectState).
    pub fn needs_restore(&self) -> bool {
        matches!(self, StorageClass::Glacier | StorageClass::DeepArchive | StorageClass::IntelligentTiering(Some(_)))
    }

    /// An Intelligent-Tiering object in an archive access tier (restored without a number of
    /// days: it stays readable until Intelligent-Tiering archives it again).
    pub fn is_it_archive(&self) -> bool {
        matches!(self, StorageClass::IntelligentTiering(Some(_)))
    }

    /// Intelligent-Tiering, in whichever tier.
    pub fn is_intelligent_tiering(&self) -> bool {
        matches!(self, StorageClass::IntelligentTiering(_))
    }

    /// The days S3 charges an object of this class for, however early it is deleted.
    pub fn minimum_days(&self) -> u32 {
        match self {
            StorageClass::StandardIa | StorageClass::OnezoneIa => 30,
            StorageClass::GlacierIr | StorageClass::Glacier => 90,
            StorageClass::DeepArchive => 180,
            StorageClass::Standard | StorageClass::IntelligentTiering(_) | StorageClass::Other(_) => 0,
        }
    }

    /// Storage per GB-month at us-east-1 list prices (USD; Intelligent-Tiering at its frequent
    /// tier, a class this build does not know at STANDARD's): what early deletion and
    /// `lifecycle` estimates are made with.
    pub fn usd_per_gb_month(&self) -> f64 {
        match self {
            StorageClass::Standard | StorageClass::IntelligentTiering(_) | StorageClass::Other(_) => 0.023,
            StorageClass::StandardIa => 0.0125,
            StorageClass::OnezoneIa => 0.01,
            StorageClass::GlacierIr => 0.004,
            StorageClass::Glacier => 0.0036,
            StorageClass::DeepArchive => 0.00099,
        }
    }
}

impl fmt::Display for StorageClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

impl serde::Serialize for StorageClass {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for StorageClass {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(StorageClass::parse(&s))
    }
}

/// How fast a restore runs (and what it costs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    Expedited,
    Standard,
    Bulk,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Expedited, Tier::Standard, Tier::Bulk];
    pub const NAMES: &'static [&'static str] = &["Expedited", "Standard", "Bulk"];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Expedited => "Expedited",
            Tier::Standard => "Standard",
            Tier::Bulk => "Bulk",
        }
    }
    /// As S3 names it (exact case).
    pub fn parse(s: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `class == "GLACIER"`: compares the stored text, as tests and logs spell a class.
impl PartialEq<&str> for StorageClass {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}
