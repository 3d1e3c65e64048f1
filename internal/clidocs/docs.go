//go:build !urfave_cli_no_docs

// Package clidocs gives berth's commands a hidden "man" command that
// prints their manual page, generated from the command definitions by
// urfave/cli. The release builds leave it out (the urfave_cli_no_docs
// tag drops the man-page generator from the binaries); make docs builds
// without that tag.
package clidocs

import (
	"fmt"

	"github.com/urfave/cli"
)

// Add adds the hidden "man" command to app.
func Add(app *cli.App) {
	app.Commands = append(app.Commands, cli.Command{
		Name:   "man",
		Usage:  "print this program's manual page (roff)",
		Hidden: true,
		Action: func(*cli.Context) error {
			page, err := app.ToMan()
			if err != nil {
				return fmt.Errorf("man page: %w", err)
			}
			fmt.Print(page)
			return nil
		},
	})
}
