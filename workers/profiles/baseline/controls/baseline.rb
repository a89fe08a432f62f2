# Portable checks: files every Linux image has, read with the shell the transport execs.

control 'baseline-01' do
  impact 0.7
  title '/etc/passwd is owned by root and not writable by group or others'
  tag severity: 'high'
  describe file('/etc/passwd') do
    it { should exist }
    it { should be_owned_by 'root' }
    it { should_not be_writable.by('group') }
    it { should_not be_writable.by('others') }
  end
end

control 'baseline-02' do
  impact 0.7
  title '/etc/shadow is not readable by others'
  tag severity: 'high'
  only_if('no /etc/shadow in this image') { file('/etc/shadow').exist? }
  describe file('/etc/shadow') do
    it { should_not be_readable.by('others') }
  end
end

control 'baseline-03' do
  impact 0.5
  title 'No account other than root has user id 0'
  tag severity: 'medium'
  describe passwd.where { uid == '0' } do
    its('users') { should cmp ['root'] }
  end
end

control 'baseline-04' do
  impact 0.5
  title 'No account has an empty password field'
  tag severity: 'medium'
  only_if('no /etc/shadow in this image') { file('/etc/shadow').exist? }
  describe shadow.where { password == '' } do
    its('users') { should be_empty }
  end
end

control 'baseline-05' do
  impact 0.3
  title 'The container does not run as root'
  tag severity: 'low'
  describe command('id -u') do
    its('stdout.strip') { should_not eq '0' }
  end
end
