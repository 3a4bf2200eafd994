package armcloud_test

import (
	"context"
	"net/url"
	"strings"
	"testing"

	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/version"
)

// Every ARM request carries the whole user agent MIC passes (its stamped version and
// --custom-user-agent), not just the 24 characters azcore keeps of Telemetry.ApplicationID:
// Azure support tells releases apart by it.
func TestARMRequestsCarryTheWholeUserAgent(t *testing.T) {
	old := version.Version
	version.Version = "v9.9.9-test"
	t.Cleanup(func() { version.Version = old })
	w := newEmulated(t, emulator.Config{VirtualMachines: []emulator.VMConfig{{Name: "vm"}}})
	ua := version.UserAgent("mic", "contoso-cluster-with-a-long-name")
	rec := &recorder{next: w.e.HTTPClient()}
	c := w.client(t, emulatorOptions(rec, ua))
	if _, err := c.Get(context.Background(), w.vm("vm")); err != nil {
		t.Fatal(err)
	}
	arm, _ := url.Parse(w.e.ARMURL())
	rec.mu.Lock()
	defer rec.mu.Unlock()
	agents := rec.agents[arm.Host]
	if len(agents) == 0 {
		t.Fatalf("no ARM request recorded (hosts: %v)", rec.agents)
	}
	for _, got := range agents {
		if !strings.HasSuffix(got, " podidentity/mic/v9.9.9-test contoso-cluster-with-a-long-name") || !strings.Contains(got, "azsdk-go-") {
			t.Errorf("ARM User-Agent %q, want the SDK's followed by %q", got, ua)
		}
	}
}
