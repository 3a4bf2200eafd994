package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/podidentity/podidentity/internal/version"
)

// MIC's requests to Kubernetes carry podidentity/mic/<stamped version> and --custom-user-agent,
// like NMI's, so audit logs tell releases apart (it once sent podidentity-mic/dev in every
// release). The server only records the header and refuses; what is tested is what MIC sends.
func TestKubernetesUserAgentCarriesTheStampedVersion(t *testing.T) {
	old := version.Version
	version.Version = "v9.9.9-test"
	t.Cleanup(func() { version.Version = old })
	var mu sync.Mutex
	var agents []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		agents = append(agents, r.UserAgent())
		mu.Unlock()
		http.Error(w, "test server", http.StatusForbidden)
	}))
	defer srv.Close()
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kc, []byte(strings.Replace(kubeconfig, "https://127.0.0.1:1", srv.URL, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	// --cleanup talks to Kubernetes only, and fails at once against this server.
	err := run(context.Background(), []string{"--kubeconfig", kc, "--cleanup", "--custom-user-agent=contoso"}, func(string) string { return "" }, io.Discard)
	if err == nil {
		t.Fatal("run against a refusing server succeeded")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(agents) == 0 {
		t.Fatalf("no request reached the server (run: %v)", err)
	}
	for _, ua := range agents {
		if ua != "podidentity/mic/v9.9.9-test contoso" {
			t.Errorf("User-Agent %q, want %q", ua, "podidentity/mic/v9.9.9-test contoso")
		}
	}
}
