//go:build urfave_cli_no_docs

package clidocs

import "github.com/urfave/cli"

// Add does nothing: this build has no man-page generator.
func Add(*cli.App) {}
