package mic_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/podidentity/podidentity/internal/emulator"
)

// Both replicas answer their probes: the standby is ready too (its caches are warm), so its
// readiness probe does not fail and Kubernetes keeps it as the hot spare.
func TestLeaderAndStandbyReplicasBothReportReady(t *testing.T) {
	w := newWorld(t, emulator.Config{VirtualMachineScaleSets: []emulator.VMSSConfig{{Name: "pool", Instances: 1}}})
	addrs := []string{freeAddr(t), freeAddr(t)}
	for _, a := range addrs {
		w.startMIC(micOpts{probeAddr: a})
	}
	for i, a := range addrs {
		for _, path := range []string{"/healthz", "/readyz"} {
			eventually(t, fmt.Sprintf("replica %d %s answering 200", i, path), func() (bool, string) {
				code, body := get(t, "http://"+a+path)
				return code == http.StatusOK, fmt.Sprintf("%d %s", code, body)
			})
		}
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func get(t *testing.T, url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
