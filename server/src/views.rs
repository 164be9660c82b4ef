//! Page templates (askama: compiled in, HTML auto-escaped) and the small view
//! models they show.

use askama::Template;
use flipstack_core::domain::UploadState;
use flipstack_core::store::{GalleryItem, GalleryPage};
use time::OffsetDateTime;
use time::macros::format_description;

use crate::session::Visitor;

/// What every page's header needs.
pub struct Chrome {
    pub email: Option<String>,
    pub csrf: String,
}

impl Chrome {
    pub fn for_visitor(visitor: &Visitor, secret: &[u8]) -> Chrome {
        Chrome { email: visitor.signed_in.as_ref().map(|s| s.email.to_string()), csrf: visitor.csrf_token(secret) }
    }
}

#[derive(Template)]
#[template(path = "form.html")]
pub struct FormPage {
    pub chrome: Chrome,
    pub blocked: bool,
    pub error: Option<String>,
    pub email_value: String,
    /// The "mail me when my pictures are flipped" box is ticked.
    pub notice: bool,
    /// The remembered choice could not be read: the box is shown unticked,
    /// and an upload leaves the choice as it is unless it is ticked.
    pub notice_unknown: bool,
    pub notice_every: String,
    pub max_size: String,
    pub max_bytes: u64,
    pub max_mp: String,
    pub max_files: u32,
}

#[derive(Template)]
#[template(path = "gallery.html")]
pub struct GalleryView {
    pub chrome: Chrome,
    pub items: Vec<ItemView>,
    pub total: u64,
    pub unfinished: u64,
    pub page: u64,
    pub pages: u64,
}

pub struct ItemView {
    pub id: i64,
    pub name: String,
    pub state: &'static str,
    pub status_text: &'static str,
    pub failure_reason: Option<String>,
    pub width: u32,
    pub height: u32,
    pub flipped_width: u32,
    pub flipped_height: u32,
    /// Both thumbnails exist (the worker made them) at this size.
    pub has_thumbs: bool,
    pub thumb_width: u32,
    pub thumb_height: u32,
    /// What the page shows at full size: `original`/`flipped`, or for
    /// HEIC/AVIF their browser-viewable copies.
    pub original_view: &'static str,
    pub flipped_view: &'static str,
    /// Screen sizes beyond the thumbnail, smallest first: (name in the
    /// image URL, width), for `srcset`.
    pub screens: Vec<(&'static str, u32)>,
    /// The formats the downloads come in (e.g. "HEIC", "JPEG").
    pub original_format: &'static str,
    pub flipped_format: &'static str,
    pub created: String,
    pub created_iso: String,
}

impl ItemView {
    pub fn from_item(item: &GalleryItem) -> ItemView {
        let at = OffsetDateTime::from_unix_timestamp_nanos(item.created_at as i128 * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let created = at.format(format_description!("[year]-[month]-[day] [hour]:[minute] UTC")).unwrap_or_default();
        let created_iso = at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        let (fw, fh) = (item.flipped_width.unwrap_or(item.width), item.flipped_height.unwrap_or(item.height));
        let thumb = item.thumb_width.zip(item.thumb_height);
        let viewable = flipstack_core::imaging::display_format(item.format).is_none();
        ItemView {
            id: item.id.get(),
            name: item.name.as_str().to_owned(),
            state: item.state.as_str(),
            status_text: match item.state {
                UploadState::Pending => "waiting to be flipped",
                UploadState::Processing => "flipping",
                UploadState::Done => "flipped",
                UploadState::Failed => "failed",
            },
            failure_reason: item.failure_reason.clone(),
            width: item.width,
            height: item.height,
            flipped_width: fw,
            flipped_height: fh,
            has_thumbs: item.state == UploadState::Done && thumb.is_some(),
            thumb_width: thumb.map_or(0, |t| t.0),
            thumb_height: thumb.map_or(0, |t| t.1),
            screens: flipstack_core::imaging::screen_sizes(item.width, item.height)
                .into_iter()
                .map(|(size, w, _)| (size.name(), w))
                .collect(),
            original_view: if viewable { "original" } else { "original-view" },
            flipped_view: if viewable { "flipped" } else { "flipped-view" },
            original_format: item.format.display_name(),
            flipped_format: flipstack_core::imaging::flipped_format(item.format).display_name(),
            created,
            created_iso,
        }
    }
}

impl GalleryView {
    pub fn new(chrome: Chrome, page: &GalleryPage, page_no: u64, per_page: u64) -> GalleryView {
        GalleryView {
            chrome,
            items: page.items.iter().map(ItemView::from_item).collect(),
            total: page.total,
            unfinished: page.unfinished,
            page: page_no,
            pages: page.total.div_ceil(per_page).max(1),
        }
    }
}

/// One picture large, with its neighbours in the gallery (a plain page:
/// links for next, previous and back; the script adds the keys).
#[derive(Template)]
#[template(path = "viewer.html")]
pub struct ViewerPage {
    pub chrome: Chrome,
    pub item: ItemView,
    /// The gallery page it is on.
    pub page: u64,
    /// (upload id, gallery page) of the newer and the older neighbour.
    pub prev: Option<(i64, u64)>,
    pub next: Option<(i64, u64)>,
}

#[derive(Template)]
#[template(path = "signin.html")]
pub struct SigninPage {
    pub chrome: Chrome,
    pub sent: bool,
    pub error: Option<String>,
    pub email_value: String,
}

#[derive(Template)]
#[template(path = "signin_link.html")]
pub struct SigninLinkPage {
    pub chrome: Chrome,
    pub token: String,
    /// The address the link is for, shown before it is used.
    pub email: String,
    pub problem: Option<String>,
}

/// The unsubscribe link's page: one button that posts to `action`.
#[derive(Template)]
#[template(path = "unsubscribe.html")]
pub struct UnsubscribePage {
    pub chrome: Chrome,
    pub action: String,
}

#[derive(Template)]
#[template(path = "message.html")]
pub struct MessagePage {
    pub chrome: Chrome,
    pub title: String,
    pub message: String,
    /// `error`, `ok` or `paused`.
    pub tone: &'static str,
    pub link: Option<(String, String)>,
}

#[derive(Template)]
#[template(path = "delete.html")]
pub struct DeletePage {
    pub chrome: Chrome,
    pub id: i64,
    pub name: String,
    pub page: u64,
    pub has_thumbs: bool,
}
