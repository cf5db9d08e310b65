//! Image names and tags, from the one file that sets them
//! (`deploy/images.env`), compiled in so the controller's default waypoint
//! image always matches what the repository builds and installs.

use std::sync::LazyLock;

/// `deploy/images.env` as shipped.
pub const IMAGES_ENV: &str = include_str!("../../deploy/images.env");

/// The value of `key` in `IMAGES_ENV` (empty if absent).
pub fn value(key: &str) -> &'static str {
    IMAGES_ENV
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map_or("", |(_, v)| v.trim())
}

/// `REGISTRY/NAME:TAG` for the image named by `key` (`WAYPOINT`, ...).
pub fn reference(key: &str) -> String {
    format!("{}/{}:{}", value("REGISTRY"), value(key), value("TAG"))
}

/// The waypoint image the deployer runs.
pub static WAYPOINT: LazyLock<String> = LazyLock::new(|| reference("WAYPOINT"));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_image_is_named_and_the_tag_is_the_workspace_version() {
        for key in ["ZTUNNEL", "CONTROLLER", "WAYPOINT", "CNI", "REGISTRY"] {
            assert!(
                !value(key).is_empty(),
                "{key} missing from deploy/images.env"
            );
        }
        assert_eq!(value("TAG"), env!("CARGO_PKG_VERSION"));
        assert_eq!(WAYPOINT.as_str(), "ghcr.io/ambit-mesh/waypoint:0.1.0");
    }
}
