// Command gen-manifests writes the chart's copy of the CRDs (charts/podidentity/crds, from
// config/crd) and the plain manifests under deploy/, all rendered from charts/podidentity.
// `make manifests` runs it; internal/chartrender's tests fail when its output is not committed.
package main

import (
	"fmt"
	"os"

	"github.com/podidentity/podidentity/internal/chartrender"
)

func main() {
	written, err := chartrender.Write()
	if err != nil {
		fmt.Fprintf(os.Stderr, "gen-manifests: %v\n", err)
		os.Exit(1)
	}
	for _, f := range written {
		fmt.Println(f)
	}
}
