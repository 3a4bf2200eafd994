package version

import "fmt"

// Package is this package's import path, the target of the -X ldflags.
const Package = "github.com/podidentity/podidentity/internal/version"

// LdFlags returns the -ldflags value that stamps a build (also used by the Makefile's images
// target and documented in build/README.md).
func LdFlags(version, commit, date string) string {
	return fmt.Sprintf("-s -w -X %s.Version=%s -X %s.Commit=%s -X %s.Date=%s", Package, version, Package, commit, Package, date)
}
