// Command gen-flags-doc refreshes the generated flag tables in docs/configuration.md from the
// AddFlags methods of MIC and NMI. `make docs-flags` runs it; docs tests fail when it is needed.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/podidentity/podidentity/internal/chartrender"
	"github.com/podidentity/podidentity/internal/flagsdoc"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "gen-flags-doc: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	root := chartrender.RepoRoot()
	var sets []flagsdoc.Set
	for _, c := range flagsdoc.Components {
		s, err := flagsdoc.Read(root, c)
		if err != nil {
			return err
		}
		sets = append(sets, s)
	}
	path := filepath.Join(root, "docs", "configuration.md")
	doc, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	out, err := flagsdoc.Update(string(doc), sets)
	if err != nil {
		return err
	}
	return os.WriteFile(path, []byte(out), 0o644)
}
