package azureconfig

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func write(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadAzureJSON(t *testing.T) {
	dir := t.TempDir()
	p := write(t, dir, "azure.json", `{"cloud":"AzurePublicCloud","tenantId":"t","aadClientId":"c","aadClientSecret":"s",
	  "subscriptionId":"sub","resourceGroup":"MC_rg","vmType":"vmss","userAssignedIdentityID":"kubelet-client","securityGroupName":"ignored"}`)
	s, err := Load(p, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if s.Config.TenantID != "t" || s.Config.SubscriptionID != "sub" || s.Config.ResourceGroup != "MC_rg" || s.Config.VMType != "vmss" ||
		s.Config.UserAssignedIdentityID != "kubelet-client" || s.Auth() != AuthServicePrincipal {
		t.Fatalf("config = %+v, auth %v", s.Config, s.Auth())
	}
	if s.Env.ResourceManagerEndpoint != "https://management.azure.com/" {
		t.Fatalf("public cloud ARM endpoint = %q", s.Env.ResourceManagerEndpoint)
	}
}

func TestLoadYAMLAndMSI(t *testing.T) {
	dir := t.TempDir()
	p := write(t, dir, "azure.yaml", "subscriptionId: sub\nresourceGroup: rg\nuseManagedIdentityExtension: true\nuserAssignedIdentityID: abc\n")
	s, err := Load(p, env(nil))
	if err != nil || s.Auth() != AuthUserMSI {
		t.Fatalf("auth %v err %v, want user MSI", s.Auth(), err)
	}
}

func TestLoadFromEnvironment(t *testing.T) {
	s, err := Load("", env(map[string]string{"SUBSCRIPTION_ID": "sub", "RESOURCE_GROUP": "rg", "USE_MSI": "TRUE", "CLOUD": "AzureChinaCloud"}))
	if err != nil || s.Auth() != AuthSystemMSI || s.Env.Name != "AzureChinaCloud" {
		t.Fatalf("settings %+v err %v, want system MSI in China cloud", s, err)
	}
}

func TestMissingFieldsNameWhatToSet(t *testing.T) {
	_, err := Load("", env(map[string]string{"SUBSCRIPTION_ID": "sub"}))
	if !errors.Is(err, ErrConfig) {
		t.Fatalf("err = %v, want ErrConfig", err)
	}
	for _, want := range []string{"resourceGroup", "tenantId", "aadClientId"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if _, err := Load("", env(map[string]string{"SUBSCRIPTION_ID": "s", "RESOURCE_GROUP": "r", "USE_MSI": "true", "CLOUD": "Mars"})); !errors.Is(err, ErrConfig) {
		t.Fatalf("unknown cloud: err = %v, want ErrConfig", err)
	}
}

func TestCustomCloudEnvironmentFile(t *testing.T) {
	dir := t.TempDir()
	ef := write(t, dir, "env.json", `{"name":"Emulator","resourceManagerEndpoint":"https://127.0.0.1:1/","activeDirectoryEndpoint":"https://127.0.0.1:2/","managementPortalURL":"x"}`)
	s, err := Load("", env(map[string]string{"SUBSCRIPTION_ID": "s", "RESOURCE_GROUP": "r", "TENANT_ID": "t", "CLIENT_ID": "c", "CLIENT_SECRET": "x",
		"CLOUD": "AzureStackCloud", EnvironmentFileVar: ef}))
	if err != nil {
		t.Fatal(err)
	}
	if s.Env.ResourceManagerEndpoint != "https://127.0.0.1:1/" || s.Env.TokenAudience != "https://127.0.0.1:1/" || len(s.Files) != 1 {
		t.Fatalf("env = %+v files %v", s.Env, s.Files)
	}
	bad := write(t, dir, "bad.json", `{"name":"x","caBundle":"`+filepath.Join(dir, "none.pem")+`","resourceManagerEndpoint":"a","activeDirectoryEndpoint":"b"}`)
	if _, err := Load("", env(map[string]string{"SUBSCRIPTION_ID": "s", "RESOURCE_GROUP": "r", "USE_MSI": "true", EnvironmentFileVar: bad})); err == nil {
		t.Fatal("a missing caBundle must be an error")
	}
	notPEM := write(t, dir, "ca.pem", "not a certificate")
	bad2 := write(t, dir, "bad2.json", `{"name":"x","caBundle":"`+notPEM+`","resourceManagerEndpoint":"a","activeDirectoryEndpoint":"b"}`)
	if _, err := Load("", env(map[string]string{"SUBSCRIPTION_ID": "s", "RESOURCE_GROUP": "r", "USE_MSI": "true", EnvironmentFileVar: bad2})); !errors.Is(err, ErrConfig) {
		t.Fatalf("caBundle without PEM: err = %v, want ErrConfig", err)
	}
}

func TestWatchSeesContentChange(t *testing.T) {
	dir := t.TempDir()
	p := write(t, dir, "azure.json", `{"aadClientSecret":"old"}`)
	fp := Fingerprint([]string{p})
	var calls atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		Watch(ctx, logr.Discard(), []string{p}, fp, 10*time.Millisecond, func() { calls.Add(1) })
		close(done)
	}()
	write(t, dir, "azure.json", `{"aadClientSecret":"new"}`)
	for calls.Load() == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
}
