# Portable checks that work in any container with a POSIX shell (nginx, busybox, alpine).

control 'demo-01' do
  impact 0.7
  title '/etc/passwd exists and is not world-writable'
  tag severity: 'high'
  describe file('/etc/passwd') do
    it { should exist }
    it { should_not be_writable.by('others') }
  end
end

control 'demo-02' do
  impact 0.5
  title '/etc/shadow is not world-readable'
  tag severity: 'medium'
  only_if('no /etc/shadow in this image') { file('/etc/shadow').exist? }
  describe file('/etc/shadow') do
    it { should_not be_readable.by('others') }
  end
end

control 'demo-03' do
  impact 0.3
  title 'The container does not run as root'
  tag severity: 'low'
  # Expected to fail for most demo images: shows a failed control without failing the
  # demo threshold (which only bounds critical and high).
  describe command('id -u') do
    its('stdout.strip') { should_not eq '0' }
  end
end
