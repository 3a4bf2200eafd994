package logging

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"k8s.io/klog/v2"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
)

func TestJSONFormatWritesOneObjectPerLineWithTheFields(t *testing.T) {
	var buf bytes.Buffer
	if err := Setup("json", 1, &buf); err != nil {
		t.Fatal(err)
	}
	defer Reset()
	log := klog.Background().WithName("nmi")
	log.Info("token served", "pod", "default/app", "status", 200)
	log.V(1).Info("detail shown at -v=1")
	log.V(2).Info("detail hidden at -v=1")
	log.Error(errors.New("boom"), "request failed", "pod", "default/app")
	klog.InfoS("through klog's own call", "node", "n1")
	klog.Flush()

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	var got []map[string]any
	for _, l := range lines {
		m := map[string]any{}
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line is not JSON: %q: %v", l, err)
		}
		got = append(got, m)
	}
	if len(got) != 4 {
		t.Fatalf("got %d lines, want 4 (the V(2) line hidden):\n%s", len(got), buf.String())
	}
	if got[0]["msg"] != "token served" || got[0]["pod"] != "default/app" || got[0]["status"] != float64(200) || got[0]["logger"] != "nmi" {
		t.Errorf("first line = %v", got[0])
	}
	if got[1]["msg"] != "detail shown at -v=1" {
		t.Errorf("second line = %v", got[1])
	}
	if got[2]["level"] != "ERROR" || got[2]["err"] != "boom" {
		t.Errorf("error line = %v", got[2])
	}
	if got[3]["msg"] != "through klog's own call" || got[3]["node"] != "n1" {
		t.Errorf("klog line = %v", got[3])
	}
}

func TestTextIsKlogsOwnAndOtherFormatsAreRefused(t *testing.T) {
	if err := Setup("text", 0, nil); err != nil {
		t.Fatal(err)
	}
	err := Setup("logfmt", 0, nil)
	if err == nil || !strings.Contains(err.Error(), "logfmt") || !strings.Contains(err.Error(), "text or json") {
		t.Fatalf("Setup(logfmt) = %v, want an error naming the value and the choices", err)
	}
}

// controller-runtime's own logger (its caches, clients, manager) must reach the same output: left
// unset, it drops its lines and prints a "SetLogger was never called" stack trace after 30 s.
func TestControllerRuntimeLogsReachTheSameOutput(t *testing.T) {
	var buf bytes.Buffer
	if err := Setup("json", 0, &buf); err != nil {
		t.Fatal(err)
	}
	defer Reset()
	ctrllog.Log.WithName("cache").Info("from controller-runtime", "kind", "Pod")
	klog.Flush()
	m := map[string]any{}
	if err := json.Unmarshal(bytes.TrimSpace(buf.Bytes()), &m); err != nil {
		t.Fatalf("controller-runtime's line is missing or not JSON: %q: %v", buf.String(), err)
	}
	if msg, _ := m["msg"].(string); !strings.Contains(msg, "from controller-runtime") || m["kind"] != "Pod" {
		t.Errorf("controller-runtime's line = %v", m)
	}
}
