bits 32
%include "topp.inc"
