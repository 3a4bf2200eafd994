package version

import (
	"bytes"
	"strings"
	"testing"
)

func TestUserAgent(t *testing.T) {
	old := Version
	t.Cleanup(func() { Version = old })
	Version = "v1.2.3"
	if got := UserAgent("nmi", ""); got != "podidentity/nmi/v1.2.3" {
		t.Errorf("UserAgent = %q", got)
	}
	if got := UserAgent("mic", "contoso"); got != "podidentity/mic/v1.2.3 contoso" {
		t.Errorf("UserAgent with custom part = %q", got)
	}
}

func TestPrintIfRequested(t *testing.T) {
	var out bytes.Buffer
	if !PrintIfRequested(true, "mic", &out) || !strings.HasPrefix(out.String(), "mic dev (commit ") {
		t.Errorf("--version printed %q", out.String())
	}
	out.Reset()
	if PrintIfRequested(false, "mic", &out) || out.Len() != 0 {
		t.Errorf("printed without --version: %q", out.String())
	}
}
