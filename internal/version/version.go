// Package version holds the build's version, commit and date, set at link time:
//
//	go build -ldflags "-X github.com/podidentity/podidentity/internal/version.Version=v0.1.0 \
//	  -X github.com/podidentity/podidentity/internal/version.Commit=$(git rev-parse HEAD) \
//	  -X github.com/podidentity/podidentity/internal/version.Date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
//
// Without ldflags (go run, go test) the commit and date come from the VCS stamp Go embeds, so a
// plain `go build` from a checkout still says which commit it is.
package version

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// Package is this package's import path, the target of the -X ldflags (build/*.Dockerfile).
const Package = "github.com/podidentity/podidentity/internal/version"

// Set by -ldflags -X; see the package comment.
var (
	Version = "dev"
	Commit  = ""
	Date    = ""
)

// Info is what a build reports about itself.
type Info struct {
	Version, Commit, Date, GoVersion, Platform string
}

// Get returns the build's Info.
func Get() Info {
	i := Info{Version: Version, Commit: Commit, Date: Date, GoVersion: runtime.Version(),
		Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch {
			case s.Key == "vcs.revision" && i.Commit == "":
				i.Commit = s.Value
			case s.Key == "vcs.time" && i.Date == "":
				i.Date = s.Value
			}
		}
	}
	if i.Commit == "" {
		i.Commit = "unknown"
	}
	if i.Date == "" {
		i.Date = "unknown"
	}
	return i
}

// String is the one-line form `--version` prints.
func (i Info) String() string {
	return fmt.Sprintf("%s (commit %s, built %s, %s, %s)", i.Version, i.Commit, i.Date, i.GoVersion, i.Platform)
}

// UserAgent is the User-Agent a component sends to Azure and Kubernetes:
// podidentity/<component>/<version>, then custom (a user's --custom-user-agent) if set.
// Azure support and API-server audit logs can then tell components and versions apart.
func UserAgent(component, custom string) string {
	ua := "podidentity/" + component + "/" + Version
	if custom != "" {
		ua += " " + custom
	}
	return ua
}

// PrintIfRequested prints "<component> <Info>" to w when requested is true, and reports whether
// it did, so that main can exit right away.
func PrintIfRequested(requested bool, component string, w io.Writer) bool {
	if !requested {
		return false
	}
	fmt.Fprintf(w, "%s %s\n", component, Get())
	return true
}
