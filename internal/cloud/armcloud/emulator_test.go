package armcloud_test

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/podidentity/podidentity/internal/azureconfig"
	"github.com/podidentity/podidentity/internal/cloud"
	"github.com/podidentity/podidentity/internal/cloud/armcloud"
	"github.com/podidentity/podidentity/internal/emulator"
)

const appID = "11111111-2222-3333-4444-555555555555"

// emulated is an emulator over HTTPS on loopback with a service principal for the client.
type emulated struct {
	e       *emulator.Emulator
	sub, rg string
}

func newEmulated(t *testing.T, cfg emulator.Config) *emulated {
	t.Helper()
	cfg.ServicePrincipals = append(cfg.ServicePrincipals, emulator.PrincipalConfig{AppID: appID, Secrets: []string{"secret"}})
	cfg.Timing = emulator.FastTiming()
	e, err := emulator.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	return &emulated{e: e, sub: e.Config().SubscriptionID, rg: e.Config().ResourceGroup}
}

// client builds an armcloud.Client for the emulator, as cmd/mic builds one from its settings.
func (w *emulated) client(t *testing.T, o armcloud.Options) *armcloud.Client {
	t.Helper()
	s := &azureconfig.Settings{
		Config: azureconfig.Config{TenantID: w.e.Config().TenantID, AADClientID: appID, AADClientSecret: "secret",
			SubscriptionID: w.sub, ResourceGroup: w.rg},
		Env: azureconfig.Environment{Name: "AzureStackCloud", ResourceManagerEndpoint: w.e.ARMURL() + "/",
			ActiveDirectoryEndpoint: w.e.AADURL() + "/", TokenAudience: emulator.ARMAudience},
		CAs: w.e.CertPool(),
	}
	if o.PollInterval == 0 {
		o.PollInterval = 20 * time.Millisecond
	}
	c, err := armcloud.New(s, o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (w *emulated) vm(name string) cloud.Resource {
	return cloud.Resource{Kind: cloud.KindVM, SubscriptionID: w.sub, ResourceGroup: w.rg, Name: name}
}

// recorder is a transport that records the User-Agent of every request it passes on.
type recorder struct {
	next   *http.Client
	mu     sync.Mutex
	agents map[string][]string // host → User-Agents
}

var _ policy.Transporter = (*recorder)(nil)

func (r *recorder) Do(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	if r.agents == nil {
		r.agents = map[string][]string{}
	}
	r.agents[req.URL.Host] = append(r.agents[req.URL.Host], req.UserAgent())
	r.mu.Unlock()
	return r.next.Do(req)
}

func emulatorOptions(rec *recorder, ua string) armcloud.Options {
	return armcloud.Options{Transport: rec, UserAgent: ua}
}
