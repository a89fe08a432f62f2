control 'demo-passwd-owner' do
  impact 0.5
  title '/etc/passwd is owned by root and not writable by others'
  describe file('/etc/passwd') do
    it { should be_owned_by 'root' }
    it { should_not be_writable.by('others') }
  end
end

control 'demo-shadow-mode' do
  impact 0.7
  title '/etc/shadow is not readable by others'
  only_if('no /etc/shadow in this image') { file('/etc/shadow').exist? }
  describe file('/etc/shadow') do
    it { should_not be_readable.by('others') }
  end
end
