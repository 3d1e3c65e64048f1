// Package adminapi is berthd's side channel next to the CRI socket: what
// the CRI cannot carry, such as the progress of pulls in flight. It is
// HTTP on a root-only Unix socket; this package holds its paths and
// types, for berthd and its clients.
package adminapi

import (
	"path/filepath"
	"time"
)

// SocketFor is the side channel's socket next to a CRI socket.
func SocketFor(criSocket string) string {
	return filepath.Join(filepath.Dir(criSocket), "berth-admin.sock")
}

// PullsPath answers GET with a JSON []Pull, oldest first.
const PullsPath = "/pulls"

// MetricsPath answers GET with Prometheus metrics.
const MetricsPath = "/metrics"

// Pull is a pull in progress.
type Pull struct {
	// Ref is the image as asked for; ID the pull's own id.
	Ref     string    `json:"ref"`
	ID      string    `json:"id"`
	Started time.Time `json:"started"`
	Layers  []Layer   `json:"layers"`
}

// Layer is one layer of a pull.
type Layer struct {
	Digest string `json:"digest"`
	// Size is -1 when the manifest does not say.
	Size int64 `json:"size"`
	Done int64 `json:"done"`
	// State is waiting, downloading, finishing, done, exists or failed.
	State string `json:"state"`
}

// LazyPath answers GET with a JSON []LazyLayer: the layers served
// lazily ([lazy_pull]), by digest; empty without lazy pulling.
const LazyPath = "/lazy"

// LazyLayer is a layer served lazily and how much of it is local.
type LazyLayer struct {
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
	Local  int64  `json:"local"`
	// Error is why its background fetch is being tried again.
	Error string `json:"error,omitempty"`
}

// ImportPath takes POST of an image archive (docker-archive or
// oci-archive) as the body, and loads its images; the query's name names
// an archive's only image where the archive does not. It answers with a
// JSON []ImportedImage, or an error's text with 400 (the archive's
// fault) or 500.
const ImportPath = "/images/import"

// ImportedImage is an image an import loaded.
type ImportedImage struct {
	ID    string   `json:"id"`
	Names []string `json:"names"`
}

// ExportPath answers GET with an archive of the images the query's ref
// values name (docker-archive, or the query's format: oci-archive). An
// error found before the archive starts is its text, with 404 (no such
// image), 400 (a bad request) or 500; one met while the archive is
// written is the ExportErrorTrailer of a response cut short.
const ExportPath = "/images/export"

// ExportErrorTrailer carries an export's error that came after the
// archive had started.
const ExportErrorTrailer = "Berth-Export-Error"
